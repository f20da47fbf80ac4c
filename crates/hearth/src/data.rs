//! `hearth export | import | backup | restore`.
//!
//! sled holds an exclusive lock on a data directory while a server runs, so
//! the commands that must work on a live server (`export`, `backup`) go
//! through that server's admin API when one is serving the directory: the
//! server writes `<data>/server.json` (its URL) while it runs, and the admin
//! key comes from `--admin-key`/`HEARTH_ADMIN_KEY` or `<data>/admin.key`.
//! With `--server URL` any server can be named explicitly. Without a running
//! server they open the store directly. `import` and `restore` write a data
//! directory and refuse to run against a live server.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_protocol::api::{BackupRequest, BackupResponse};
use hearth_protocol::Document;
use indicatif::{ProgressBar, ProgressStyle};

use crate::serve::SERVER_FILE;
use crate::{BackupArgs, ExportArgs, ImportArgs, RestoreArgs, Target};

/// Documents per store import call.
const IMPORT_CHUNK: usize = 500;

struct Remote {
    url: String,
    key: String,
}

fn read_key_file(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join(hearth_server::admin_key::ADMIN_KEY_FILE))
        .ok()
        .map(|k| k.trim().to_string())
}

/// The URL of a live server serving `data`, if any.
async fn live_server(data: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data.join(SERVER_FILE)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json["url"].as_str()?.to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let ok = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    ok.then_some(url)
}

async fn remote_for(target: &Target) -> Result<Option<Remote>, String> {
    let url = match &target.server {
        Some(url) => Some(url.trim_end_matches('/').to_string()),
        None => live_server(&target.data).await,
    };
    let Some(url) = url else { return Ok(None) };
    let key = target
        .admin_key
        .clone()
        .or_else(|| read_key_file(&target.data))
        .ok_or_else(|| {
            format!("a server is running at {url}; give its admin key with --admin-key or HEARTH_ADMIN_KEY")
        })?;
    Ok(Some(Remote { url, key }))
}

async fn open_store(data: &Path) -> Result<hearth_store::Store, String> {
    if !data.exists() {
        return Err(format!("data directory {} does not exist", data.display()));
    }
    let config = hearth_store::StoreConfig::new(data);
    let shown = data.display().to_string();
    tokio::task::spawn_blocking(move || hearth_store::Store::open(config))
        .await
        .map_err(|e| format!("store open task failed: {e}"))?
        .map_err(|e| {
            format!("cannot open the store in {shown}: {e} (is a server running on it? then pass --server URL)")
        })
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {pos} documents ({per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn open_output(out: &str) -> Result<Box<dyn std::io::Write>, String> {
    if out == "-" {
        Ok(Box::new(std::io::BufWriter::new(std::io::stdout().lock())))
    } else {
        let file = std::fs::File::create(out).map_err(|e| format!("cannot create {out}: {e}"))?;
        Ok(Box::new(std::io::BufWriter::new(file)))
    }
}

pub async fn export(args: ExportArgs) -> Result<(), String> {
    let mut out = open_output(&args.out)?;
    let bar = spinner("exporting");
    let count = match remote_for(&args.target).await? {
        Some(remote) => {
            let http = reqwest::Client::new();
            let mut response = http
                .get(format!("{}/v1/admin/export", remote.url))
                .bearer_auth(&remote.key)
                .send()
                .await
                .map_err(|e| format!("export request failed: {e}"))?;
            if !response.status().is_success() {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                return Err(format!("server answered {status}: {body}"));
            }
            let mut count = 0u64;
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("export stream failed: {e}"))?
            {
                let lines = chunk.iter().filter(|b| **b == b'\n').count() as u64;
                count += lines;
                bar.inc(lines);
                out.write_all(&chunk)
                    .map_err(|e| format!("write failed: {e}"))?;
            }
            count
        }
        None => {
            let store = open_store(&args.target.data).await?;
            let mut count = 0u64;
            for doc in store.export() {
                let doc = doc.map_err(|e| format!("reading the store failed: {e}"))?;
                serde_json::to_writer(&mut out, &doc).map_err(|e| format!("write failed: {e}"))?;
                out.write_all(b"\n")
                    .map_err(|e| format!("write failed: {e}"))?;
                count += 1;
                bar.inc(1);
            }
            store.shutdown().await.map_err(|e| e.to_string())?;
            count
        }
    };
    out.flush().map_err(|e| format!("write failed: {e}"))?;
    bar.finish_and_clear();
    tracing::info!(documents = count, "export complete");
    Ok(())
}

pub async fn import(args: ImportArgs) -> Result<(), String> {
    if let Some(url) = live_server(&args.data).await {
        return Err(format!(
            "a server at {url} is serving {}; stop it before importing",
            args.data.display()
        ));
    }
    std::fs::create_dir_all(&args.data)
        .map_err(|e| format!("cannot create {}: {e}", args.data.display()))?;
    let (reader, total): (Box<dyn BufRead>, u64) = if args.file == "-" {
        (Box::new(BufReader::new(std::io::stdin().lock())), 0)
    } else {
        let file = std::fs::File::open(&args.file)
            .map_err(|e| format!("cannot open {}: {e}", args.file))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(BufReader::new(file)), len)
    };
    let bar = if total > 0 {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("importing {bar:40} {bytes}/{total_bytes} ({eta}) {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        spinner("importing")
    };
    let store = open_store(&args.data).await?;
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
    let mut imported = 0u64;
    for (number, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("read failed: {e}"))?;
        if total > 0 {
            bar.inc(line.len() as u64 + 1);
        }
        if line.trim().is_empty() {
            continue;
        }
        let doc: Document = serde_json::from_str(&line)
            .map_err(|e| format!("line {}: not a document: {e}", number + 1))?;
        chunk.push(doc);
        if chunk.len() == IMPORT_CHUNK {
            imported += store
                .import(std::mem::take(&mut chunk))
                .await
                .map_err(|e| format!("import failed near line {}: {e}", number + 1))?;
            if total == 0 {
                bar.set_position(imported);
            }
            bar.set_message(format!("{imported} documents"));
        }
    }
    if !chunk.is_empty() {
        imported += store
            .import(chunk)
            .await
            .map_err(|e| format!("import failed: {e}"))?;
    }
    store.shutdown().await.map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    tracing::info!(documents = imported, "import complete");
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("bad path {}: {e}", path.display()))
}

pub async fn backup(args: BackupArgs) -> Result<(), String> {
    let out = absolute(&args.out)?;
    let bar = spinner("backing up");
    match remote_for(&args.target).await? {
        Some(remote) => {
            let http = reqwest::Client::new();
            let response = http
                .post(format!("{}/v1/admin/backup", remote.url))
                .bearer_auth(&remote.key)
                .json(&BackupRequest {
                    dir: out.display().to_string(),
                })
                .send()
                .await
                .map_err(|e| format!("backup request failed: {e}"))?;
            if !response.status().is_success() {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                return Err(format!("server answered {status}: {body}"));
            }
            let info: BackupResponse = response
                .json()
                .await
                .map_err(|e| format!("bad backup response: {e}"))?;
            bar.finish_and_clear();
            tracing::info!(dir = %info.dir, seq = info.seq, "backup complete (taken by the running server)");
        }
        None => {
            let store = open_store(&args.target.data).await?;
            let target = out.clone();
            let info = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.backup_to(&target))
                    .await
                    .map_err(|e| format!("backup task failed: {e}"))?
                    .map_err(|e| format!("backup failed: {e}"))?
            };
            store.shutdown().await.map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            tracing::info!(dir = %out.display(), seq = info.seq, documents = info.documents, "backup complete");
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

pub fn restore(args: RestoreArgs) -> Result<(), String> {
    let from_empty = std::fs::read_dir(&args.from)
        .map(|mut d| d.next().is_none())
        .map_err(|e| format!("cannot read backup {}: {e}", args.from.display()))?;
    if from_empty {
        return Err(format!("{} is empty: not a backup", args.from.display()));
    }
    if args.data.join(SERVER_FILE).exists() {
        // A stale file after a crash is harmless, but a live server is not.
        let runtime = tokio::runtime::Handle::current();
        let data = args.data.clone();
        let live = std::thread::spawn(move || runtime.block_on(live_server(&data)))
            .join()
            .ok()
            .flatten();
        if let Some(url) = live {
            return Err(format!(
                "a server at {url} is serving {}; stop it before restoring",
                args.data.display()
            ));
        }
    }
    let non_empty = std::fs::read_dir(&args.data)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty {
        if !args.force {
            return Err(format!(
                "{} is not empty; restore into a new directory or pass --force to replace its contents",
                args.data.display()
            ));
        }
        std::fs::remove_dir_all(&args.data)
            .map_err(|e| format!("cannot clear {}: {e}", args.data.display()))?;
    }
    copy_dir(&args.from, &args.data).map_err(|e| format!("restore copy failed: {e}"))?;
    tracing::info!(from = %args.from.display(), data = %args.data.display(), "restore complete");
    Ok(())
}
