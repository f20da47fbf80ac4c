//! The chat example end to end, as its README runs it: a real `hearth serve`
//! with `crates/hearth-rules/examples/chat.rules` and the example's config,
//! and the `chat` CLI as subprocesses typing on stdin. Checks what issues 4
//! and 5 ask of the example: real sign-in, messages delivered live, only
//! members read a room, nobody posts as someone else.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

mod common;

use common::chat_server;
use hearth_testkit::TestServer;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// One running `chat` process: its stdin, and its stdout+stderr lines.
struct Chat {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Chat {
    fn start(server: &TestServer, args: &[&str]) -> Chat {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
            .arg("--server")
            .arg(format!("ws://127.0.0.1:{}", server.port()))
            .args(args)
            .env_remove("HEARTH_TOKEN")
            .env_remove("HEARTH_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out = tx.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let _ = out.send(line);
            }
        });
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let _ = tx.send(line);
            }
        });
        let stdin = child.stdin.take().unwrap();
        Chat {
            child,
            stdin,
            lines,
            seen: vec![],
        }
    }

    /// Waits (up to 20 s) for a line containing `needle`; returns it.
    async fn wait_for(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "no line containing {needle:?}; the client printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    async fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Waits for the process to exit; returns its success.
    async fn exit(mut self) -> (bool, Vec<String>) {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("chat exits")
            .unwrap();
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(200), self.lines.recv()).await
        {
            self.seen.push(line);
        }
        (status.success(), self.seen)
    }
}

const ALICE: [&str; 4] = [
    "--email",
    "alice@example.com",
    "--password",
    "correct horse battery",
];
const BOB: [&str; 4] = [
    "--email",
    "bob@example.com",
    "--password",
    "another good password",
];

fn args<'a>(name: &'a str, account: &'a [&'a str], extra: &'a [&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--room", "lobby", "--name", name];
    v.extend_from_slice(account);
    v.extend_from_slice(extra);
    v
}

async fn login(server: &TestServer, email: &str, password: &str) -> (String, String) {
    let r = server
        .anonymous_client()
        .post(
            "/v1/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    (
        r.body["access_token"].as_str().unwrap().to_string(),
        r.body["uid"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_chat_live_a_stranger_reads_nothing_and_nobody_posts_as_another() {
    // Building the binary (when stale) is not part of the time limit.
    hearth_testkit::hearth_binary().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(180), async {
        let server = chat_server().await;

        // Alice signs up; her client creates the room with her as owner.
        let mut alice = Chat::start(&server, &args("alice", &ALICE, &["--signup"]));
        alice.wait_for("created room lobby").await;
        alice.wait_for("signed in in room lobby as alice").await;

        // Bob signs up but is not a member: the client says so and exits.
        let bob = Chat::start(&server, &args("bob", &BOB, &["--signup"]));
        let (ok, printed) = bob.exit().await;
        assert!(!ok, "a non-member cannot join: {printed:?}");
        let hint = printed
            .iter()
            .find(|l| l.contains("not a member of room lobby"))
            .unwrap_or_else(|| panic!("{printed:?}"));
        let bob_uid = hint.rsplit(' ').next().unwrap().to_string();
        let (bob_token, bob_uid_from_login) =
            login(&server, "bob@example.com", "another good password").await;
        assert_eq!(bob_uid, bob_uid_from_login);

        // Alice invites him; he joins again (signing in, no --signup).
        alice.type_line(&format!("/invite {bob_uid}")).await;
        alice.wait_for("* invited").await;
        let mut bob = Chat::start(&server, &args("bob", &BOB, &[]));
        bob.wait_for("signed in in room lobby as bob").await;

        // Lines typed by one appear live at the other.
        alice.type_line("hello bob").await;
        let line = bob.wait_for("hello bob").await;
        assert!(line.contains("alice: hello bob"), "{line}");
        bob.type_line("hi alice").await;
        let line = alice.wait_for("hi alice").await;
        assert!(line.contains("bob: hi alice"), "{line}");

        // Carol has an account but is no member: her client cannot read the room...
        let carol = Chat::start(
            &server,
            &args(
                "carol",
                &["--email", "carol@example.com", "--password", "carols password"],
                &["--signup"],
            ),
        );
        let (ok, printed) = carol.exit().await;
        assert!(!ok, "{printed:?}");
        assert!(
            printed.iter().any(|l| l.contains("not a member")),
            "{printed:?}"
        );
        // ...nor can she through REST, by query or by document.
        let (carol_token, _) = login(&server, "carol@example.com", "carols password").await;
        let carol_rest = server.client().with_bearer(Some(carol_token.clone()));
        let query = carol_rest
            .post("/v1/query", &json!({"collection": "rooms/lobby/messages"}))
            .await;
        assert_eq!(query.status, 403, "{}", query.text);
        let room = carol_rest.get("/v1/db/rooms/lobby").await;
        assert_eq!(room.status, 403, "{}", room.text);
        let admin_view = server
            .client()
            .post("/v1/query", &json!({"collection": "rooms/lobby/messages"}))
            .await;
        let some_message = admin_view.body["documents"][0]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", admin_view.text))
            .to_string();
        let read_one = carol_rest.get(&format!("/v1/db/{some_message}")).await;
        assert_eq!(read_one.status, 403, "{}", read_one.text);

        // Bob, a member, cannot post as Alice: over REST...
        let (_, alice_uid) = login(&server, "alice@example.com", "correct horse battery").await;
        let bob_rest = server.client().with_bearer(Some(bob_token.clone()));
        let forged = json!({"author": alice_uid, "text": "I am alice"});
        let denied = bob_rest
            .put("/v1/db/rooms/lobby/messages/forged1", &forged)
            .await;
        assert_eq!(denied.status, 403, "{}", denied.text);
        assert_eq!(denied.error_code(), Some("permission-denied"));
        // ...nor over the WebSocket, nor into a room he is not in as himself.
        let client = hearth_client::Client::connect(
            hearth_client::ClientConfig::new(&server.ws_url()).token(bob_token.clone()),
        )
        .await
        .unwrap();
        let mut data = hearth_protocol::Map::new();
        data.insert(
            "author".into(),
            hearth_protocol::Value::String(alice_uid.clone()),
        );
        data.insert(
            "text".into(),
            hearth_protocol::Value::String("I am alice".into()),
        );
        let path = hearth_protocol::DocPath::parse("rooms/lobby/messages/forged2").unwrap();
        let err = client.create(path, data).await.unwrap_err();
        assert_eq!(err.code(), hearth_protocol::ErrorCode::PermissionDenied);
        client.shutdown().await;
        let own = json!({"author": bob_uid, "text": "hi"});
        let elsewhere = bob_rest
            .post(
                "/v1/batch",
                &json!({"writes": [{"op": "create", "path": "rooms/other/messages/m1", "data": own}]}),
            )
            .await;
        assert_eq!(elsewhere.status, 403, "{}", elsewhere.text);

        // Nothing forged was stored.
        for id in ["forged1", "forged2"] {
            let r = server
                .client()
                .get(&format!("/v1/db/rooms/lobby/messages/{id}"))
                .await;
            assert_eq!(r.status, 404, "{id}: {}", r.text);
        }

        alice.type_line("/quit").await;
        bob.type_line("/quit").await;
        assert!(alice.exit().await.0);
        assert!(bob.exit().await.0);
    })
    .await;
    assert!(result.is_ok(), "the chat scenario must finish within 180 s");
}
