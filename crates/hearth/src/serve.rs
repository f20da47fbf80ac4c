//! `hearth serve`: open the store, build the app, serve until SIGTERM or
//! Ctrl-C, then shut down in order: stop accepting, let in-flight requests
//! finish (bounded by `shutdown_grace_secs`), flush and close the store.

use std::path::PathBuf;
use std::time::Duration;

use hearth_server::{Access, AdminKey, AdminKeySource, AppState};

use crate::wiring::{admin_key_checker, forward_revocations, RestTokens, SocketAuth};
use crate::{config, init_logging, LogFormat, ServeArgs};

/// Written into the data dir while serving so that `hearth backup/export
/// --data DIR` can find the server that holds the directory's lock.
pub const SERVER_FILE: &str = "server.json";

pub async fn run(args: ServeArgs, log_format: Option<LogFormat>) -> Result<(), String> {
    let file = config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    let format = match (log_format, file.log_format.as_deref()) {
        (Some(f), _) => f,
        (None, Some("json")) => LogFormat::Json,
        (None, Some("pretty") | None) => LogFormat::Pretty,
        (None, Some(other)) => {
            return Err(format!(
                "log_format must be \"pretty\" or \"json\", got {other:?}"
            ))
        }
    };
    init_logging(format);

    let data_dir: PathBuf = args
        .data
        .or(file.data.clone())
        .unwrap_or_else(|| PathBuf::from("./hearth_data"));
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| ([127, 0, 0, 1], 8080).into());
    let dev = args.dev || file.dev.unwrap_or(false);
    let options = file.http.server_options();
    // Everything the file configures is checked before anything is opened.
    let gateway_config = file.gateway.gateway_config()?;
    let auth_config = file
        .auth
        .auth_config(std::env::var("HEARTH_SMTP_PASSWORD").ok())?;
    let cors = crate::wiring::cors_layer(&file.http.cors)?;
    let grace = Duration::from_secs(file.http.shutdown_grace_secs);

    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
    let configured_key = args.admin_key.clone().or(file.admin_key.clone());
    let (admin_key, source) = AdminKey::load_or_create(&data_dir, configured_key.as_deref())
        .map_err(|e| e.to_string())?;
    match &source {
        AdminKeySource::Generated(path) => {
            // Printed exactly once, on the start that created it; never logged.
            eprintln!();
            eprintln!(
                "  A new admin key was generated and saved to {}:",
                path.display()
            );
            eprintln!();
            eprintln!("      {}", admin_key.expose());
            eprintln!();
            eprintln!("  Use it as `Authorization: Bearer <key>`. It is not printed again.");
            eprintln!();
        }
        AdminKeySource::File(path) => {
            tracing::info!(file = %path.display(), "using the admin key stored in the data directory")
        }
        AdminKeySource::Configured => tracing::info!("using the configured admin key"),
    }
    if dev {
        for _ in 0..3 {
            tracing::warn!("DEVELOPMENT MODE (--dev): requests WITHOUT credentials act as the ADMIN. Never use this in production.");
        }
    }

    let store_config = config::store_config(&file, &data_dir)?;
    let store = tokio::task::spawn_blocking(move || hearth_store::Store::open(store_config))
        .await
        .map_err(|e| format!("store open task failed: {e}"))?
        .map_err(|e| format!("cannot open the store in {}: {e}", data_dir.display()))?;

    let mut access = Access::new(admin_key.clone(), dev);
    // Keeps the rules file watcher alive while serving.
    let mut _rules_watch = None;
    if let Some(rules_path) = args.rules.clone().or(file.rules.clone()) {
        let ruleset = hearth_rules::RulesFile::load(&rules_path)
            .map_err(|e| format!("invalid rules file {}: {e}", rules_path.display()))?;
        let control = hearth_rules::AccessControl::new(ruleset);
        _rules_watch = Some(hearth_rules::RulesFile::watch(
            rules_path.clone(),
            control.clone(),
        ));
        let lookup_store = store.clone();
        let lookup: hearth_server::access::Lookup =
            std::sync::Arc::new(move |path: &hearth_protocol::DocPath| {
                lookup_store.get(path).ok().flatten()
            });
        access = access.with_rules(control, lookup);
        tracing::info!(rules = %rules_path.display(), "security rules loaded (hot reload on change)");
    } else {
        tracing::info!("no rules file: only the admin key has access");
    }
    let control = access
        .rules_control()
        .unwrap_or_else(hearth_rules::AccessControl::deny_all);
    match &auth_config.smtp {
        Some(smtp) => tracing::info!(host = %smtp.host, port = smtp.port, tls = ?smtp.tls, "auth mails go out over SMTP"),
        None => tracing::info!("no [auth.smtp]: auth mails go to the development outbox (GET /v1/admin/outbox) and the log"),
    }
    let auth = hearth_auth::AuthService::start(auth_config, store.clone())
        .await
        .map_err(|e| format!("cannot start the auth service: {e}"))?;
    let access = access.with_token_verifier(std::sync::Arc::new(RestTokens(auth.clone())));
    let gateway = hearth_gateway::Gateway::new(
        gateway_config,
        store.clone(),
        control,
        std::sync::Arc::new(SocketAuth {
            admin_key: admin_key.clone(),
            auth: auth.clone(),
            dev,
        }),
    );
    forward_revocations(&auth, gateway.clone());
    crate::heap::spawn_trimmer(gateway.clone());
    // Socket mutation records (idempotent retries) expire after a day.
    hearth_gateway::writes::spawn_mutation_pruner(
        store.clone(),
        hearth_gateway::writes::MUTATION_RECORD_TTL,
        hearth_gateway::writes::MUTATION_PRUNE_INTERVAL,
    );
    let services = vec![
        hearth_auth::router(auth.clone(), admin_key_checker(admin_key.clone())),
        hearth_gateway::router(gateway.clone()),
    ];
    // /v1/openapi.json describes the auth routes too.
    hearth_server::openapi::set_service_documents(vec![hearth_auth::openapi()]);
    let state = AppState::new(store.clone(), access, options);
    let metrics_gateway = gateway.clone();
    state.on_scrape(move || metrics_gateway.publish_metrics());
    let mut app = hearth_server::app(state.clone(), services);
    if let Some(cors) = cors {
        app = app.layer(cors);
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("listener has no address: {e}"))?;
    let server_file = data_dir.join(SERVER_FILE);
    let _ = std::fs::write(
        &server_file,
        serde_json::json!({ "url": format!("http://{local}"), "pid": std::process::id() })
            .to_string(),
    );
    tracing::info!(address = %local, data = %data_dir.display(), "hearth is serving");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = state.clone();
    let drain_gateway = gateway.clone();
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: no new connections; finishing in-flight requests");
        drain_state.set_not_ready();
        drain_gateway.shutdown();
        let _ = stop_tx.send(());
    };
    let server = tokio::spawn(hearth_server::serve(listener, app, shutdown));
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => {
            result.map_err(|e| format!("server task failed: {e}"))?.map_err(|e| format!("server failed: {e}"))?;
        }
        _ = stop_rx => {
            // Draining: give in-flight requests (and long-lived sockets) `grace` to finish.
            match tokio::time::timeout(grace, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error while draining"),
                Ok(Err(e)) => tracing::error!(error = %e, "server task failed while draining"),
                Err(_) => tracing::warn!(?grace, "connections still open after the grace period; closing anyway"),
            }
        }
    }
    store
        .shutdown()
        .await
        .map_err(|e| format!("store shutdown failed: {e}"))?;
    let _ = std::fs::remove_file(&server_file);
    tracing::info!("store flushed and closed; bye");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
