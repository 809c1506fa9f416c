//! The `mercato` binary as a user runs it: bad configuration is refused with the variable
//! named, `up` prints its URLs and demo logins, serves, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mercato() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mercato"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn bad_configuration_names_every_variable_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = mercato()
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("MERCATO_AUTH_PORT", "eighty")
        .env("MERCATO_REQUEST_TIMEOUT_MS", "-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MERCATO_REQUEST_TIMEOUT_MS=\"-1\": expected a whole number"),
        "{err}"
    );
    assert!(
        err.contains("MERCATO_AUTH_PORT=\"eighty\""),
        "every bad variable at once: {err}"
    );
    let out = mercato()
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("MERCATO_AUTH_PORT", "eighty")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MERCATO_AUTH_PORT=\"eighty\": expected a whole number from 0 to 65535"),
        "{err}"
    );
    let out = mercato().args(["serve", "nonsense"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service"));
}

#[test]
fn nats_and_kafka_together_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on either: the configuration is refused before any connection is tried.
    let out = mercato()
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("MERCATO_NATS_URL", "nats://127.0.0.1:1")
        .env("MERCATO_KAFKA_BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MERCATO_KAFKA_BROKERS=\"127.0.0.1:1\"")
            && err.contains("MERCATO_NATS_URL unset"),
        "{err}"
    );
    let out = mercato()
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("MERCATO_KAFKA_BROKERS", "kafka-without-port")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MERCATO_KAFKA_BROKERS=\"kafka-without-port\": expected host:port"),
        "{err}"
    );
}

#[test]
fn outside_embedded_mode_a_missing_shared_secret_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the configuration is refused before any connection is tried.
    let pg = "postgres://postgres@127.0.0.1:1/nothing";
    let out = mercato()
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("MERCATO_DATABASE_URL", pg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MERCATO_SERVICE_SECRET"), "{err}");
    assert!(err.contains("MERCATO_PSP_WEBHOOK_SECRET"), "{err}");
    assert!(
        !dir.path().join("psp-webhook-secret").exists(),
        "nothing is generated outside embedded mode"
    );
    let out = mercato()
        .args(["serve", "payment"])
        .env("MERCATO_DATA_DIR", dir.path())
        .env("MERCATO_DATABASE_URL", pg)
        .env("MERCATO_SERVICE_SECRET", "set")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MERCATO_PSP_WEBHOOK_SECRET"), "{err}");
    assert!(!err.contains("MERCATO_SERVICE_SECRET"), "{err}");
}

#[test]
fn up_prints_urls_and_logins_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let child = mercato()
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("MERCATO_AUTH_PORT", "0")
        .env("MERCATO_CATALOG_PORT", "0")
        .env("MERCATO_PSP_MOCK_PORT", "0")
        .env("MERCATO_INVENTORY_PORT", "0")
        .env("MERCATO_ORDER_PORT", "0")
        .env("MERCATO_PAYMENT_PORT", "0")
        .env("MERCATO_CART_PORT", "0")
        .env("MERCATO_GATEWAY_PORT", "0")
        .env("MERCATO_ARGON2_MEMORY_KIB", "4096")
        .env("MERCATO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // However the test ends, no Mercato is left running.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push(line.clone());
        if line.contains("Ctrl-C") || Instant::now() > deadline {
            break;
        }
    }
    let text = printed.join("\n");
    assert!(text.contains("customer@mercato.local"), "{text}");
    // The shared secrets were generated into the data directory, readable by its owner only.
    for file in ["service-secret", "psp-webhook-secret"] {
        let path = dir.path().join(file);
        let secret = std::fs::read_to_string(&path).expect(file);
        assert_eq!(secret.trim().len(), 64, "{file}: 32 random bytes in hex");
        assert!(!text.contains(secret.trim()), "{file} is not printed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
    assert!(text.contains("Seller-demo-2026"), "{text}");
    let catalog = printed
        .iter()
        .find(|l| l.trim_start().starts_with("catalog"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("catalog URL printed")
        .to_owned();
    let body = reqwest::blocking_get(&format!("{}/products?limit=1", catalog));
    assert!(body.contains("\"items\""), "{body}");
    // The front door is printed first and serves the same catalog.
    let api = printed
        .iter()
        .find(|l| l.trim_start().starts_with("API "))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("API URL printed")
        .to_owned();
    let via_gateway = reqwest::blocking_get(&format!("{}/products?limit=1", api));
    assert_eq!(via_gateway, body);
    // Where every service listens is written into the data dir for `mercato load` and
    // `mercato audit`, which then need no argument.
    let endpoints: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("endpoints.json")).expect("endpoints.json"),
    )
    .unwrap();
    assert_eq!(
        format!("{}/api/v1", endpoints["gateway"].as_str().unwrap()),
        api
    );
    let audit = mercato()
        .arg("audit")
        .env("MERCATO_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(
        audit.status.code(),
        Some(0),
        "{report}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(report.contains("clean: every invariant holds"), "{report}");
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        #[expect(
            clippy::disallowed_methods,
            reason = "a synchronous test waiting for a child process, which std cannot wait for with a deadline"
        )]
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        !dir.path().join("endpoints.json").exists(),
        "a stopped shop's endpoints are removed"
    );
}

#[test]
fn migrate_applies_every_services_migrations_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = mercato()
        .arg("migrate")
        .env("MERCATO_DATA_DIR", dir.path())
        .env("MERCATO_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("migrations applied: auth, catalog, inventory, order, cart, payment"),
        "{stdout}"
    );
    for db in ["auth", "catalog", "inventory", "order", "cart", "payment"] {
        assert!(dir.path().join(format!("{db}.db")).exists(), "{db}.db");
    }
    // Once more changes nothing and still succeeds; one service can be named.
    let again = mercato()
        .args(["migrate", "order"])
        .env("MERCATO_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("migrations applied: order"));

    let unknown = mercato()
        .args(["migrate", "warehouse"])
        .env("MERCATO_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown service \"warehouse\""));
}

mod reqwest {
    /// A tiny blocking GET without pulling reqwest's blocking feature into the build.
    pub fn blocking_get(url: &str) -> String {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { ::reqwest::get(url).await.unwrap().text().await.unwrap() })
    }
}
