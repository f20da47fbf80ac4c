//! A terminal chat room on the Hearth Rust SDK.
//!
//! It signs in (email + password through `/v1/auth/*`, or a raw token / the
//! admin key), joins `rooms/<room>` (creating it if missing), prints the
//! room's messages live in time order and posts every line typed on stdin.
//! Data model and rules: `crates/hearth-rules/examples/chat.rules`.
//!
//! ```text
//! rooms/{room}                 { name, owner, members: [uid, ...] }
//! rooms/{room}/messages/{id}   { author: uid, text, sent_at: server timestamp }
//! users/{uid}                  { display_name }
//! ```
//!
//! Commands: `/invite <uid>` (room owner only) adds a member, `/quit` leaves.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use hearth_client::{Client, ClientConfig, ClientError, ConnectionState, DocChangeKind};
use hearth_protocol::{
    CollectionPath, DocPath, Document, ErrorCode, FieldPath, Map, Query, Transform, Value, Write,
};
use tokio::io::AsyncBufReadExt;

#[derive(Parser, Debug)]
#[command(about = "A terminal chat on hearth serve")]
struct Args {
    /// Server address: ws://host:port (or http://host:port).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    server: String,
    /// Room id (a document id in `rooms`).
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Your display name.
    #[arg(long)]
    name: String,
    /// An access token or the admin key (instead of email/password).
    #[arg(long, env = "HEARTH_TOKEN")]
    token: Option<String>,
    /// Sign in with this email (with --password).
    #[arg(long)]
    email: Option<String>,
    #[arg(long, env = "HEARTH_PASSWORD")]
    password: Option<String>,
    /// Create the account first.
    #[arg(long)]
    signup: bool,
    /// Keep messages not yet confirmed by the server in this directory, so
    /// that lines typed while the server is unreachable are sent after the
    /// chat is restarted (one chat per directory).
    #[arg(long)]
    persist: Option<std::path::PathBuf>,
}

/// The result of `/v1/auth/signup|login|refresh`.
struct Session {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
}

fn http_base(server: &str) -> String {
    let s = server.trim_end_matches('/');
    let s = s
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1);
    match s.find("/v1/") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

async fn auth_call(base: &str, endpoint: &str, body: serde_json::Value) -> Result<Session, String> {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/auth/{endpoint}"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let status = response.status();
    let json: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "{endpoint}: {} {}",
            json["error"]["code"].as_str().unwrap_or("error"),
            json["error"]["message"].as_str().unwrap_or("")
        ));
    }
    Ok(Session {
        access_token: json["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        refresh_token: json["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        expires_in: json["expires_in"].as_u64().unwrap_or(3600),
    })
}

fn doc_path(text: &str) -> Result<DocPath, String> {
    DocPath::parse(text).map_err(|e| e.to_string())
}

fn text_of(doc: &Document, field: &str) -> String {
    match doc.fields.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_json().to_string(),
        None => String::new(),
    }
}

fn clock(doc: &Document) -> String {
    match doc.fields.get("sent_at") {
        Some(Value::Timestamp(t)) => {
            let secs = t.seconds().rem_euclid(86_400);
            format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
        }
        _ => "--:--:--".into(),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let base = http_base(&args.server);
    let (token, refresh) = match (&args.token, &args.email, &args.password) {
        (Some(token), _, _) => (token.clone(), None),
        (None, Some(email), Some(password)) => {
            let body = serde_json::json!({"email": email, "password": password});
            let session = if args.signup {
                auth_call(&base, "signup", body).await?
            } else {
                auth_call(&base, "login", body).await?
            };
            (session.access_token.clone(), Some(session))
        }
        _ => {
            return Err(
                "give --token, or --email and --password (add --signup the first time)".into(),
            )
        }
    };

    let mut config = ClientConfig::new(&args.server)
        .token(token)
        .client_name("hearth-chat-example");
    if let Some(dir) = &args.persist {
        config = config.persistence(dir);
    }
    let client = Client::connect(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (uid, admin) = match client.state() {
        ConnectionState::Connected { uid, admin, .. } => (uid, admin),
        other => return Err(format!("not connected: {other:?}")),
    };
    // The admin key has no uid: it posts under the display name.
    let me = uid.clone().unwrap_or_else(|| args.name.clone());
    if !admin && uid.is_none() {
        return Err("anonymous sessions cannot post in this example; sign in".into());
    }
    if let Some(session) = refresh {
        tokio::spawn(keep_token_fresh(client.clone(), base.clone(), session));
    }

    // Our display name, and the room (created with us as owner if missing).
    if let Some(uid) = &uid {
        let mut profile = Map::new();
        profile.insert("display_name".into(), Value::String(args.name.clone()));
        client
            .set(doc_path(&format!("users/{uid}"))?, profile)
            .await
            .map_err(|e| format!("saving your profile: {e}"))?;
    }
    let room = doc_path(&format!("rooms/{}", args.room))?;
    let mut room_data = Map::new();
    room_data.insert("name".into(), Value::String(args.room.clone()));
    room_data.insert("owner".into(), Value::String(me.clone()));
    room_data.insert(
        "members".into(),
        Value::Array(vec![Value::String(me.clone())]),
    );
    match client.create(room.clone(), room_data).await {
        Ok(_) => println!(
            "* created room {} (you own it; /invite <uid> adds members)",
            args.room
        ),
        Err(e) if e.code() == ErrorCode::AlreadyExists => {}
        // Someone else's room that we cannot see: reading will tell.
        Err(e) if e.code() == ErrorCode::PermissionDenied => {}
        Err(e) => return Err(format!("creating the room: {e}")),
    }

    // Display names of everyone (readable by any signed-in user).
    let mut names: HashMap<String, String> = HashMap::new();
    let mut users = client.subscribe_query(Query::collection(
        CollectionPath::parse("users").map_err(|e| e.to_string())?,
    ));
    let messages_path = CollectionPath::parse(&format!("rooms/{}/messages", args.room))
        .map_err(|e| e.to_string())?;
    let mut query = Query::collection(messages_path.clone())
        .order("sent_at", hearth_protocol::Direction::Asc)
        .limit(100);
    query.limit_to_last = true;
    let mut messages = client.subscribe_query(query);
    println!(
        "* {} in room {} as {} — type a message and press Enter",
        if admin { "admin" } else { "signed in" },
        args.room,
        args.name
    );

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut printed: BTreeMap<DocPath, bool> = BTreeMap::new();
    let mut users_open = true;
    loop {
        tokio::select! {
            snapshot = users.next(), if users_open => match snapshot {
                Some(Ok(snapshot)) => {
                    for doc in snapshot.documents() {
                        names.insert(doc.path.id().to_string(), text_of(doc, "display_name"));
                    }
                }
                Some(Err(e)) => eprintln!("* user names unavailable: {e}"),
                // Ended: stop polling it (messages still show author uids).
                None => users_open = false,
            },
            snapshot = messages.next() => match snapshot {
                Some(Ok(snapshot)) => {
                    for change in &snapshot.changes {
                        if change.kind == DocChangeKind::Removed {
                            continue;
                        }
                        // Print each message once; our own appear at once
                        // (pending, marked …) and are not reprinted when the
                        // server confirms them.
                        if printed.contains_key(&change.doc.path) {
                            continue;
                        }
                        printed.insert(change.doc.path.clone(), change.pending);
                        let author = text_of(&change.doc, "author");
                        let who = names.get(&author).cloned().unwrap_or(author);
                        let mark = if change.pending { " …" } else { "" };
                        println!("[{}] {who}: {}{mark}", clock(&change.doc), text_of(&change.doc, "text"));
                    }
                }
                Some(Err(e)) if e.code() == ErrorCode::PermissionDenied => {
                    return Err(format!(
                        "you are not a member of room {}; ask its owner to type /invite {}",
                        args.room, me
                    ));
                }
                Some(Err(e)) => return Err(format!("messages: {e}")),
                None => return Err("the connection closed".into()),
            },
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let line = line.trim().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    if line == "/quit" {
                        break;
                    }
                    if let Some(member) = line.strip_prefix("/invite ") {
                        let write = Write::update(room.clone(), Default::default()).with_transform(
                            FieldPath::parse("members").map_err(|e| e.to_string())?,
                            Transform::ArrayUnion { values: vec![Value::String(member.trim().to_string())] },
                        );
                        let pending = client.write(write);
                        tokio::spawn(async move {
                            match pending.await {
                                Ok(_) => println!("* invited"),
                                Err(e) => eprintln!("* invite failed: {e}"),
                            }
                        });
                        continue;
                    }
                    let mut data = Map::new();
                    data.insert("author".into(), Value::String(me.clone()));
                    data.insert("text".into(), Value::String(line));
                    let id = hearth_protocol::path::document_id_from_random(rand_bytes());
                    let path = messages_path.doc(&id).map_err(|e| e.to_string())?;
                    let write = Write::create(path, data).with_transform(
                        FieldPath::parse("sent_at").map_err(|e| e.to_string())?,
                        Transform::ServerTimestamp,
                    );
                    let pending = client.write(write);
                    tokio::spawn(async move {
                        if let Err(e) = pending.await {
                            eprintln!("* not sent: {e}");
                        }
                    });
                }
                Ok(None) | Err(_) => break,
            },
        }
    }
    // Let queued messages reach the server before leaving.
    for _ in 0..50 {
        if client.stats().pending_writes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.shutdown().await;
    Ok(())
}

fn rand_bytes() -> [u8; 20] {
    let mut out = [0u8; 20];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut x = seed as u64 ^ (std::process::id() as u64) << 32;
    for b in &mut out {
        // xorshift: ids only need to be unlikely to collide.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    out
}

/// Refreshes the access token a minute before it expires and hands it to the
/// live connection (`auth` frame), so the socket never hits 4001.
async fn keep_token_fresh(client: Client, base: String, mut session: Session) {
    loop {
        let wait = session.expires_in.saturating_sub(60).max(10);
        tokio::time::sleep(Duration::from_secs(wait)).await;
        match auth_call(
            &base,
            "refresh",
            serde_json::json!({"refresh_token": session.refresh_token}),
        )
        .await
        {
            Ok(next) => {
                if let Err(e) = client.set_token(next.access_token.clone()).await {
                    report(&e);
                }
                session = next;
            }
            Err(e) => {
                eprintln!("* token refresh failed: {e}");
                return;
            }
        }
    }
}

fn report(e: &ClientError) {
    eprintln!("* the server refused the refreshed token: {e}");
}
