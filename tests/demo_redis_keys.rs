//! Black-box test of the demo on Redis: what reaches Redis's key names. The demo's stand-in
//! sign-in takes a credential (`Authorization: Bearer <token>`, a `session=<token>`
//! cookie) for the user, so its per-user keys are stored as digests, as API keys are:
//! Redis never holds a credential (a review found `tollgate:default:user:sk_live_...`).
//! Nor an e-mail address: the sign-in lockout's keys are digests too (a review found
//! `tollgate:sign-in-failures:ceo@bigcorp.example`).

mod common;

use common::Example;
use tollgate_testkit::RedisServer;

#[tokio::test]
async fn no_credential_reaches_a_redis_key_name() {
    let redis = RedisServer::start();
    let demo = Example::start(
        "demo",
        &[
            ("REDIS_URL", &redis.url()),
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    );
    let bearer = "sk_live_4f9a1c7e";
    let cookie = "tok_secret_8d2b";
    for path in ["/api/projects", "/api/me"] {
        let by_bearer = demo.get(path).bearer_auth(bearer).send().await.unwrap();
        assert_eq!(by_bearer.status(), 200, "{path}");
        let by_cookie = demo
            .get(path)
            .header("cookie", format!("session={cookie}"))
            .send()
            .await
            .unwrap();
        assert_eq!(by_cookie.status(), 200, "{path}");
    }
    let chat = demo
        .post("/api/assistant/chat")
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .body(r#"{"message":"hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    // A failed sign-in counts against the e-mail: personal data, stored as a digest.
    let email = "ceo@bigcorp.example";
    let failed = demo
        .post("/api/auth/sign-in")
        .header("content-type", "application/json")
        .body(format!(r#"{{"email":"{email}","password":"wrong"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 401);

    let keys = redis.cli(["--scan"]);
    let keys: Vec<&str> = keys.lines().collect();
    // Each user bucket spent holds its user's key, as a digest.
    for bucket in ["default:user:#", "chat:user:#", "sign-in-failures:#"] {
        assert!(
            keys.iter().any(|k| k.contains(bucket)),
            "no {bucket}... key among {keys:?}"
        );
    }
    for secret in [bearer, cookie, "bigcorp"] {
        assert!(
            keys.iter().all(|k| !k.contains(secret)),
            "{secret} in {keys:?}"
        );
    }
}
