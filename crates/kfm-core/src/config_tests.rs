//! Tests of `config.rs`.
use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn defaults_parse() {
    let c = Config::parse(Config::default_toml(), "kfm.toml", no_env).unwrap();
    assert_eq!(c.store_url, StoreUrl::File("store".into()));
    assert_eq!(c.environment, Environment::Dev);
    assert_eq!(
        c.signing_key,
        Some(SecretRef::File("keys/ledger.key".into()))
    );
}

#[test]
fn env_overrides_file() {
    let c = Config::parse(Config::default_toml(), "kfm.toml", |k| {
        (k == "KFM_STORE_URL").then(|| "s3://kfm-bucket/a/b".to_owned())
    })
    .unwrap();
    assert_eq!(
        c.store_url,
        StoreUrl::S3 {
            bucket: "kfm-bucket".into(),
            prefix: "a/b".into()
        }
    );
}

#[test]
fn literal_secrets_are_refused_naming_the_key() {
    let cases = [
        (
            "[store]\nurl = \"s3://b-1/p\"\nsecret_access_key = \"abc\"\n",
            "kfm.toml:3: store.secret_access_key",
        ),
        (
            "[signing]\nkey = \"MC4CAQAwBQYDK2VwBCIEI\"\n",
            "kfm.toml:2: signing.key",
        ),
        (
            "[extra]\npassword = \"hunter2\"\n",
            "kfm.toml:2: extra.password",
        ),
        (
            "[store]\nurl = \"AKIAIOSFODNN7EXAMPLE\"\n",
            "kfm.toml:2: store.url",
        ),
    ];
    for (text, want) in cases {
        let e = Config::parse(text, "kfm.toml", no_env)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(want), "{e}");
        assert!(e.contains("literal secret refused"), "{e}");
    }
    let e = Config::parse("", "kfm.toml", |k| {
        (k == "KFM_SIGNING_KEY").then(|| "raw-key".into())
    })
    .unwrap_err();
    assert_eq!(e.source_name, "KFM_SIGNING_KEY");
}

#[test]
fn references_are_accepted() {
    let c = Config::parse("[signing]\nkey = \"env:KFM_KEY\"\n", "kfm.toml", no_env).unwrap();
    assert_eq!(c.signing_key, Some(SecretRef::Env("KFM_KEY".into())));
}

#[test]
fn bad_urls_and_unknown_keys() {
    assert!(
        StoreUrl::parse("s3://AK:SK@bucket/x")
            .unwrap_err()
            .contains("credentials")
    );
    assert!(StoreUrl::parse("http://x").is_err());
    assert!(StoreUrl::parse("s3://B/x").is_err());
    let e = Config::parse("[store]\nulr = \"file://x\"\n", "kfm.toml", no_env).unwrap_err();
    assert!(e.to_string().contains("unknown field `ulr`"), "{e}");
    assert_eq!(e.line, 2);
}

#[test]
fn postgres_urls_carry_no_password() {
    let c = Config::parse(
        "[postgres]\nurl = \"postgres://kfm@db:5432/kfm\"\npassword = \"env:PGPW\"\n",
        "kfm.toml",
        no_env,
    )
    .unwrap();
    let pg = c.postgres.unwrap();
    assert_eq!(pg.url, "postgres://kfm@db:5432/kfm");
    assert_eq!(pg.password, Some(SecretRef::Env("PGPW".into())));
    for (text, key) in [
        (
            "[postgres]\nurl = \"postgres://kfm:hunter2@db/kfm\"\n",
            "postgres.url",
        ),
        (
            "[postgres]\nurl = \"postgres://db/kfm?password=hunter2\"\n",
            "postgres.url",
        ),
        ("[postgres]\nurl = \"mysql://db/kfm\"\n", "postgres.url"),
        (
            "[postgres]\nurl = \"postgres://db/kfm\"\npassword = \"hunter2\"\n",
            "postgres.password",
        ),
    ] {
        let e = Config::parse(text, "kfm.toml", no_env).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    // The environment names it too, and wins over the file.
    let c = Config::parse("", "kfm.toml", |k| {
        (k == "KFM_POSTGRES_URL").then(|| "postgresql://kfm@127.0.0.1/x".to_owned())
    })
    .unwrap();
    assert_eq!(c.postgres.unwrap().url, "postgresql://kfm@127.0.0.1/x");
    let e = Config::parse("", "kfm.toml", |k| {
        (k == "KFM_POSTGRES_URL").then(|| "postgres://a:b@h/x".to_owned())
    })
    .unwrap_err();
    assert!(e.to_string().contains("KFM_POSTGRES_URL"), "{e}");
}
