//! The HTTP layer: axum routes, wire types, auth, the error envelope, OpenAPI — and
//! [`serve_with`], the library entry point that wires store, engine, supervisor and router
//! (used by `editd serve` with the real pipeline and by the tests with a test double).

mod assets;
mod auth;
mod callbacks;
mod error;
mod extract;
mod health;
mod openai;
mod openapi;
mod runs;
mod signing;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::{Extension, Router};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::KEY_FILE;
pub use openapi::openapi_json;

use crate::config::ServeConfig;
use crate::engine::{EngineHandle, PipelineLoader};
use crate::image_io::FetchPolicy;
use crate::runs::callback_worker::{CallbackService, CallbackSettings};
use crate::runs::callbacks::{CallbackStore, OutboxSettings, OutputRenderer, RetrySchedule};
use crate::runs::service::{DataDir, RunService, ServiceSettings, MAX_ASSET_BYTES};
use crate::runs::sqlite::SqliteStore;
use crate::runs::store::RunStore;
use error::ApiError;
use extract::{AllowEmptyBody, BodyLimit};
use wire::UrlCtx;

/// Body limit of every route but run creation and uploads.
pub(crate) const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Body limit of `POST …/runs` (room for a few base64 `data:` images).
pub(crate) const RUN_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    svc: Arc<RunService>,
    callbacks: Arc<CallbackService>,
    keys: auth::KeySet,
    urls: UrlCtx,
    model_id: String,
    aliases: Vec<String>,
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("run store: {0}")]
    Store(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("engine: {0}")]
    Engine(#[from] crate::engine::EngineError),
}

fn router(st: AppState) -> Router {
    let upload_limit = MAX_ASSET_BYTES as usize + 1024;
    Router::new()
        .route("/v1/health", get(health::health))
        .route("/v1/readiness", get(health::readiness))
        .route("/v1/auth/me", get(health::me))
        .route(
            "/v1/models/{*rest}",
            post(runs::create_run)
                .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(RUN_BODY_LIMIT))
                .layer::<_, std::convert::Infallible>(Extension(BodyLimit(RUN_BODY_LIMIT))),
        )
        .route(
            "/v1/images/edits",
            post(openai::images_edits)
                .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(RUN_BODY_LIMIT)),
        )
        .route("/v1/runs", get(runs::list_runs))
        .route("/v1/runs/{id}", get(runs::get_run))
        .route(
            "/v1/runs/{id}/cancellation",
            post(runs::cancel_run).layer::<_, std::convert::Infallible>(Extension(AllowEmptyBody)),
        )
        .route("/v1/runs/{id}/callback", get(callbacks::history))
        .route(
            "/v1/runs/{id}/callback-redeliveries",
            post(callbacks::redeliver)
                .layer::<_, std::convert::Infallible>(Extension(AllowEmptyBody)),
        )
        .route(
            "/v1/callback-secrets",
            post(callbacks::create_secret)
                .layer::<_, std::convert::Infallible>(Extension(AllowEmptyBody))
                .get(callbacks::list_secrets),
        )
        .route(
            "/v1/callback-secrets/{id}",
            delete(callbacks::delete_secret),
        )
        .route("/v1/asset-uploads", post(assets::create_upload))
        .route(
            "/v1/asset-uploads/{id}/content",
            put(assets::put_upload)
                .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(upload_limit))
                .layer::<_, std::convert::Infallible>(Extension(BodyLimit(upload_limit))),
        )
        .route(
            "/v1/asset-uploads/{id}/confirmations",
            post(assets::confirm_upload)
                .layer::<_, std::convert::Infallible>(Extension(AllowEmptyBody)),
        )
        .route("/v1/assets/{id}/content", get(assets::get_asset))
        .route("/v1/files/{run_id}/{name}", get(assets::get_output))
        .fallback(|req: axum::extract::Request| async move {
            ApiError::RouteNotFound(format!("{} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            extract::require_auth,
        ))
        // a handler panic becomes a 500 inside the envelope layer, so it is enveloped too
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(extract::envelope_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(st)
}

/// A running server (HTTP listener, supervisor, engine thread).
pub struct Server {
    addr: SocketAddr,
    base_url: String,
    generated_key: Option<String>,
    svc: Arc<RunService>,
    drain: CancellationToken,
    done: JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// The bound address (the real port when `port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `--public-url`, or `http://HOST:PORT` as bound.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The key generated on this start (first start without `--api-key`), to print once.
    pub fn generated_api_key(&self) -> Option<&str> {
        self.generated_key.as_deref()
    }

    /// Starts the drain (as SIGTERM does): readiness 503, new runs 503, the current run finishes.
    pub fn shutdown(&self) {
        self.svc.start_draining();
        self.drain.cancel();
    }

    /// Waits until the server has drained and stopped (call [`Server::shutdown`] first).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Opens the store under `cfg.data_dir` (re-queueing runs a crash left running), binds the
/// listener, starts the engine thread (which runs `loader`) and the supervisor, and serves.
/// Returns once the listener accepts connections.
pub async fn serve_with(cfg: ServeConfig, loader: PipelineLoader) -> Result<Server, ServeError> {
    let dd_err = |source| ServeError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    };
    let data = DataDir::create(&cfg.data_dir).map_err(dd_err)?;
    let (keys, generated_key) = auth::KeySet::load(&cfg.api_keys, data.root()).map_err(dd_err)?;
    let signer = signing::UrlSigner::load(data.root()).map_err(dd_err)?;
    let removed = data.remove_temp_files();
    if removed > 0 {
        tracing::info!(removed, "removed temp files left by an interrupted write");
    }
    let db_path = data.db_path();
    let max_attempts = cfg.max_attempts;
    let sqlite = tokio::task::spawn_blocking(move || SqliteStore::open(&db_path))
        .await
        .map_err(|e| ServeError::Store(e.to_string()))?
        .map_err(|e| ServeError::Store(e.to_string()))?;
    let sqlite = Arc::new(sqlite);

    let bind = SocketAddr::new(cfg.host, cfg.port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| ServeError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr: bind, source })?;
    if cfg.public_url.is_none() && addr.ip().is_unspecified() {
        tracing::warn!(%addr, "bound to all interfaces without --public-url: output URLs will name {addr}, which clients cannot reach; set --public-url");
    }
    let base_url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let urls = UrlCtx {
        base_url: base_url.clone(),
        signer,
        ttl_secs: cfg.url_ttl.as_secs(),
    };
    // Callback payloads carry the output as GET /v1/runs/{id} renders it (signed URLs).
    let render: OutputRenderer = {
        let urls = urls.clone();
        Arc::new(move |run: &crate::runs::Run| {
            serde_json::to_value(wire::render_run(run, &urls).output)
                .unwrap_or(serde_json::Value::Null)
        })
    };
    sqlite.set_outbox(OutboxSettings {
        render: render.clone(),
        max_attempts: cfg.callback_max_attempts,
    });

    let store = {
        let s = sqlite.clone();
        tokio::task::spawn_blocking(move || -> Result<(), crate::runs::store::StoreError> {
            let rep = s.recover(max_attempts, crate::runs::now())?;
            if rep.requeued > 0 || rep.exhausted > 0 {
                tracing::warn!(
                    requeued = rep.requeued,
                    failed = rep.exhausted,
                    "recovered runs left running by a previous process"
                );
            }
            Ok(())
        })
        .await
        .map_err(|e| ServeError::Store(e.to_string()))?
        .map_err(|e| ServeError::Store(e.to_string()))?;
        let s: Arc<dyn RunStore> = sqlite.clone();
        s
    };
    let callback_policy = FetchPolicy {
        allow_http: cfg.allow_http_callbacks,
        allow_private: cfg.allow_private_networks,
        allow_cidrs: cfg.allow_cidrs.clone(),
        connect_timeout: std::time::Duration::from_secs(5),
        total_timeout: std::time::Duration::from_secs(10),
        max_redirects: 0,
        ..FetchPolicy::default()
    };
    let callback_svc = Arc::new(CallbackService::new(
        sqlite.clone() as Arc<dyn CallbackStore>,
        CallbackSettings {
            schedule: RetrySchedule {
                base: cfg.callback_retry_base,
                cap: cfg.callback_retry_cap,
            },
            max_attempts: cfg.callback_max_attempts,
            policy: callback_policy.clone(),
            poll: std::time::Duration::from_millis(200),
        },
        render,
    ));
    let stop_callbacks = CancellationToken::new();
    let callback_worker = tokio::spawn(callback_svc.clone().run_worker(stop_callbacks.clone()));

    let engine = EngineHandle::spawn(cfg.device.clone(), loader)?;
    let settings = ServiceSettings {
        model_id: cfg.model_id.clone(),
        aliases: cfg.model_aliases.clone(),
        max_queue: cfg.max_queue,
        base_url: base_url.clone(),
        fetch_policy: FetchPolicy {
            allow_http: cfg.allow_http_image_urls,
            allow_private: cfg.allow_private_networks,
            allow_cidrs: cfg.allow_cidrs.clone(),
            ..FetchPolicy::default()
        },
        callback_policy,
    };
    let svc = Arc::new(RunService::new(
        store,
        data.clone(),
        settings,
        engine.watch_state(),
    ));
    let worker = tokio::spawn(crate::runs::supervisor::run_worker(svc.clone(), engine));

    let st = AppState {
        svc: svc.clone(),
        callbacks: callback_svc,
        keys,
        urls,
        model_id: cfg.model_id.clone(),
        aliases: cfg.model_aliases.clone(),
    };
    let app = router(st);
    let drain = CancellationToken::new();
    let stop_http = CancellationToken::new();
    let http = {
        let stop = stop_http.clone();
        tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    let timeout = cfg.shutdown_timeout;
    let done = {
        let drain = drain.clone();
        tokio::spawn(async move {
            drain.cancelled().await;
            tracing::info!("draining: finishing the current run, queued runs stay queued");
            if tokio::time::timeout(timeout, worker).await.is_err() {
                tracing::warn!(?timeout, "the current run did not finish in time; it will be re-queued at the next start");
            }
            stop_http.cancel();
            stop_callbacks.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), http).await;
            let _ = callback_worker.await;
        })
    };
    Ok(Server {
        addr,
        base_url,
        generated_key,
        svc,
        drain,
        done,
    })
}
