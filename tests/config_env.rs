//! Configuration from the environment. Its own test binary (one process, one test) because it
//! sets process-wide environment variables.

use mdingest::config::Config;

const FILE: &str = "[sources.polygon]\nenabled = true\n[sources.alpaca]\nenabled = true\n";

#[test]
fn environment_layers_verbatim_and_in_order() {
    // The vendor's variable fills a configured source's key.
    std::env::set_var("POLYGON_API_KEY", "vendor_key");
    std::env::set_var("APCA_API_KEY_ID", "0123");
    std::env::set_var("APCA_API_SECRET_KEY", "1e5");
    let cfg = Config::from_toml_str(FILE).expect("config");
    assert_eq!(
        cfg.sources.polygon.as_ref().unwrap().api_key.expose(),
        "vendor_key"
    );
    // Numeric-looking credentials arrive exactly as written, not as numbers.
    let alpaca = cfg.sources.alpaca.as_ref().unwrap();
    assert_eq!(alpaca.key_id.expose(), "0123");
    assert_eq!(alpaca.secret_key.expose(), "1e5");

    // MDINGEST__ wins over the vendor's variable.
    std::env::set_var("MDINGEST__SOURCES__POLYGON__API_KEY", "007");
    std::env::set_var("MDINGEST__PIPELINE__BATCH_MAX_ROWS", "777");
    let cfg = Config::from_toml_str(FILE).expect("config");
    assert_eq!(
        cfg.sources.polygon.as_ref().unwrap().api_key.expose(),
        "007"
    );
    assert_eq!(cfg.pipeline.batch_max_rows, 777);

    // A vendor variable does not switch on a source the file leaves out.
    let cfg = Config::from_toml_str("[sources.yahoo]\n").expect("config");
    assert!(cfg.sources.alpaca.is_none());
    std::env::remove_var("MDINGEST__SOURCES__POLYGON__API_KEY");
    let cfg = Config::from_toml_str("").expect("config");
    assert!(cfg.sources.polygon.is_none() && cfg.sources.alpaca.is_none());

    // Nothing secret in the rendered configuration.
    std::env::set_var("MDINGEST__REDIS__URL", "redis://:redispw@127.0.0.1:6379/0");
    std::env::set_var(
        "MDINGEST__DATABASE__URL",
        "postgres://u@127.0.0.1/db?password=dbpw",
    );
    let shown = Config::from_toml_str(FILE).unwrap().to_redacted_toml();
    for secret in ["vendor_key", "0123", "1e5", "redispw", "dbpw"] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(shown.contains("REDACTED"));
}
