//! What ships for operators besides the binary: the alert rules (checked and unit-tested by
//! promtool), the example Prometheus config, the systemd units (`systemd-analyze verify` and
//! `security` through `systemd/verify.sh`), and a real Prometheus scraping `mdingest run`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use mdingest::sim::{SimConfig, Simulator, WsConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs promtool and prometheus where `scripts/lib/promtool.sh` can; false (having said
/// why on stderr) where it cannot.
fn prometheus_tools() -> bool {
    let script = repo().join("scripts/lib/promtool.sh");
    let ok = Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && ensure_promtool", script.display()))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: promtool cannot be installed here (see the line above)");
    }
    ok
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("start the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !prometheus_tools() {
        return;
    }
    let m = repo().join("monitoring");
    let checked = run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(m.join("alerts.yml")),
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_ok(
        Command::new("promtool")
            .arg("test")
            .arg("rules")
            .arg(m.join("alerts.test.yml")),
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
    run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(m.join("prometheus.yml")),
    );
    // The dashboard is one JSON document over the same metrics.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    assert!(dashboard
        .to_string()
        .contains("mdingest_bars_written_total"));
}

#[test]
fn the_systemd_units_verify_and_score_well_on_security() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let out = run_ok(
        Command::new("bash")
            .arg(repo().join("systemd/verify.sh"))
            .arg(env!("CARGO_BIN_EXE_mdingest")),
    );
    assert!(out.contains("exposure"), "{out}");
}

async fn get_json(url: &str) -> Option<serde_json::Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

/// The single value of an instant query, if there is one.
async fn query(prometheus: &str, q: &str) -> Option<f64> {
    let url = format!("{prometheus}/api/v1/query?query={}", urlencode(q));
    let v = get_json(&url).await?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_daemon_and_sees_bars_counted() {
    if !prometheus_tools()
        || Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("SKIPPED: the prometheus server is not installed");
        return;
    }
    let db = TestDb::migrated("mon_prometheus").await;
    let (from, to) = recent_session_stretch();
    let sim = Simulator::start(SimConfig {
        api_key: "mon-key".into(),
        symbols: vec!["AAPL".into()],
        data_from: Some(from),
        data_to: Some(to),
        ws: WsConfig {
            live_from: Some(from),
            bars_per_sec: 1.0,
            ..WsConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let cfg = db.config_file(
        dir.path(),
        &format!(
            "[service]\ngap_fill_lookback_secs = 60\nstream_max_bar_age_secs = 864000\n\
             [sources.polygon]\napi_key = \"mon-key\"\nrest_url = \"{}\"\nws_url = \"{}\"\n\
             symbols = [\"AAPL\"]\ntimeframe = \"1m\"\nrequests_per_minute = 6000\n",
            sim.base_url(),
            sim.ws_url()
        ),
    );
    let daemon = Killed(spawn_mdingest_env(
        &["--config", cfg.to_str().unwrap(), "run"],
        &[("MDINGEST__METRICS__LISTEN", &metrics)],
    ));
    let prom_port = free_port();
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mdingest\n    \
             static_configs:\n      - targets: [\"{metrics}\"]\n"
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let base = format!("http://127.0.0.1:{prom_port}");
    let written = r#"mdingest_bars_written_total{job="mdingest",source="polygon"}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut up = None;
    let mut first = None;
    let mut moved = false;
    while Instant::now() < deadline && !moved {
        tokio::time::sleep(Duration::from_millis(500)).await;
        up = query(&base, r#"up{job="mdingest"}"#).await;
        let now = query(&base, written).await;
        match (first, now) {
            (None, Some(v)) => first = Some(v),
            (Some(a), Some(b)) => moved = b > a,
            _ => {}
        }
    }
    assert_eq!(up, Some(1.0), "Prometheus sees the target up");
    assert!(
        moved,
        "the written counter moved between scrapes (first {first:?})"
    );
    drop(daemon);
}
