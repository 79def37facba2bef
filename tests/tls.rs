//! TLS to PostgreSQL: a server of the test's own, with a self-signed certificate and a
//! `pg_hba.conf` that refuses unencrypted connections. `sslmode=require` works for the pool
//! (import) and for single sessions (migrate, status); `verify-full` with `sslrootcert` accepts the
//! right host name and refuses a wrong one with a clear line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("root.crt")
    }

    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/mdtls?{params}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

fn ok(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| {
        if !o.status.success() {
            eprintln!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        o.status.success()
    })
}

/// A PostgreSQL that speaks only TLS, or `None` (with why) where one cannot be started here.
fn start() -> Option<OwnPostgres> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .find(|b| b.join("initdb").exists());
    let Some(bin) = bin else {
        eprintln!("SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql");
        return None;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("runuser").arg("--help").output().is_err() {
        eprintln!("SKIPPED: starting a server as user postgres needs root and runuser");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pg = OwnPostgres {
        dir,
        bin: bin.clone(),
        port,
    };
    let data = pg.data();
    assert!(ok(Command::new("chown").arg("postgres").arg(pg.dir.path())));
    assert!(ok(as_postgres(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)));
    // A CA of the test's own and a server certificate for localhost signed by it (webpki, like
    // browsers, refuses a CA certificate as the server's own).
    let tmp = pg.dir.path();
    assert!(ok(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=mdingest test CA", "-keyout"])
        .arg(tmp.join("ca.key"))
        .arg("-out")
        .arg(pg.cert())));
    assert!(ok(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout"
        ])
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(tmp.join("server.csr"))));
    std::fs::write(tmp.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    assert!(ok(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(tmp.join("server.csr"))
        .arg("-CA")
        .arg(pg.cert())
        .arg("-CAkey")
        .arg(tmp.join("ca.key"))
        .arg("-extfile")
        .arg(tmp.join("san.ext"))
        .arg("-out")
        .arg(data.join("server.crt"))));
    assert!(ok(Command::new("chown")
        .args(["postgres"])
        .arg(data.join("server.key"))
        .arg(data.join("server.crt"))));
    assert!(ok(Command::new("chmod")
        .arg("600")
        .arg(data.join("server.key"))));
    std::fs::write(
        data.join("pg_hba.conf"),
        "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c ssl=on -c unix_socket_directories={}",
        pg.dir.path().display()
    );
    assert!(ok(as_postgres(&bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .arg("-o")
        .arg(opts)
        .arg("-l")
        .arg(pg.dir.path().join("log"))
        .args(["-w", "start"])));
    Some(pg)
}

fn config(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("mdingest.toml");
    std::fs::write(
        &path,
        format!("[database]\nurl = \"{url}\"\npool_max_size = 4\n"),
    )
    .unwrap();
    path
}

#[test]
fn require_and_verify_full_connect_over_tls_and_a_wrong_host_name_is_refused() {
    let Some(pg) = start() else { return };
    let work = tempfile::tempdir().unwrap();

    // The server refuses plain connections: what works below is encrypted.
    let plain = config(work.path(), &pg.url("127.0.0.1", "sslmode=disable"));
    let out = mdingest(&["--config", plain.to_str().unwrap(), "migrate"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no encryption"), "{}", stderr(&out));

    let require = config(work.path(), &pg.url("127.0.0.1", "sslmode=require"));
    let cfg = require.to_str().unwrap();
    let out = mdingest(&["--config", cfg, "migrate"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The pool and its writers.
    let file = write(
        work.path(),
        "day.csv",
        minute_csv(["AAPL", "MSFT"], 30).as_bytes(),
    );
    let out = import(&require, &[&file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary_value(&stdout(&out), "inserted"), "60");
    // A session of its own.
    let out = mdingest(&["--config", cfg, "status", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let feeds: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(feeds.as_array().unwrap().len(), 2);

    let root = format!("sslrootcert={}", pg.cert().display());
    let full = config(
        work.path(),
        &pg.url("localhost", &format!("sslmode=verify-full&{root}")),
    );
    let out = mdingest(&["--config", full.to_str().unwrap(), "status"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The certificate is for localhost, not for 127.0.0.1.
    let wrong = config(
        work.path(),
        &pg.url("127.0.0.1", &format!("sslmode=verify-full&{root}")),
    );
    let out = mdingest(&["--config", wrong.to_str().unwrap(), "status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not valid for") && err.contains("127.0.0.1"),
        "{err}"
    );
    eprintln!("verify-full, wrong host: {err}");
    // verify-ca checks the chain only: the same host is accepted.
    let ca = config(
        work.path(),
        &pg.url("127.0.0.1", &format!("sslmode=verify-ca&{root}")),
    );
    let out = mdingest(&["--config", ca.to_str().unwrap(), "status"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A root certificate that is not there is named.
    let missing = config(
        work.path(),
        &pg.url(
            "localhost",
            "sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
        ),
    );
    let out = mdingest(&["--config", missing.to_str().unwrap(), "status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/root.crt"),
        "{}",
        stderr(&out)
    );
}
