//! `RunService`: the one handle the API layer calls (create, read, list, cancel runs; assets;
//! idempotency records; readiness). Store calls run on the blocking pool; admission converts
//! `data:` URIs into stored assets so the queue holds references, not megabytes of base64.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::inputs::{asset_ref, InputLoader, ASSET_SCHEME};
use super::store::*;
use super::validate::validate_request;
use super::{now, Asset, FieldError, Run, RunsError};
use crate::engine::{CancelToken, EngineState};
use crate::image_io::{self, FetchPolicy};

/// Largest upload or inline (`data:`) image.
pub const MAX_ASSET_BYTES: u64 = 50 * 1024 * 1024;

/// The files editd keeps under `--data-dir`.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory tree if missing.
    pub fn create(root: &Path) -> std::io::Result<Self> {
        for sub in ["assets", "outputs"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Boot GC: removes temp files a crash left behind mid-write (`.name.pid.n.tmp`, see
    /// `image_io::write_atomic`) under `assets/` and `outputs/*/`. Returns how many.
    pub fn remove_temp_files(&self) -> usize {
        let mut dirs = vec![self.root.join("assets"), self.root.clone()];
        if let Ok(rd) = std::fs::read_dir(self.root.join("outputs")) {
            dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        let mut n = 0;
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                if image_io::is_temp_artifact(&e.file_name().to_string_lossy())
                    && std::fs::remove_file(e.path()).is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("runs.db")
    }
    pub fn asset_path(&self, id: Uuid) -> PathBuf {
        self.root.join("assets").join(id.to_string())
    }
    pub fn output_dir(&self, run: Uuid) -> PathBuf {
        self.root.join("outputs").join(run.to_string())
    }
}

/// Readiness inputs, reported per component.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub model: EngineState,
    pub store: Result<(), String>,
    pub draining: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        matches!(self.model, EngineState::Ready(_)) && self.store.is_ok() && !self.draining
    }
}

/// Shared run-layer state; see the module docs.
pub struct RunService {
    pub(crate) store: Arc<dyn RunStore>,
    pub(crate) data: DataDir,
    model_id: String,
    aliases: Vec<String>,
    max_queue: u64,
    engine_state: watch::Receiver<EngineState>,
    draining: AtomicBool,
    /// Wakes the supervisor when a run is queued (and on drain).
    pub(crate) wake: Notify,
    /// Cancel tokens of runs the supervisor holds (dispatching or running).
    pub(crate) active: Mutex<HashMap<Uuid, CancelToken>>,
    /// Our own base URL, so asset URLs we handed out are recognised as assets.
    base_url: String,
    /// Fetches and decodes inputs (the supervisor's) and checks URLs at admission.
    pub(crate) inputs: InputLoader,
    /// Checks `callback_url` at admission.
    callback_fetcher: crate::image_io::Fetcher,
}

impl std::fmt::Debug for RunService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunService")
            .field("model_id", &self.model_id)
            .finish()
    }
}

/// How [`RunService::create_run`] ended.
#[derive(Debug)]
pub enum Created {
    New(Run),
    Replayed(Run),
}

/// Settings of [`RunService::new`].
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub model_id: String,
    pub aliases: Vec<String>,
    pub max_queue: u64,
    pub base_url: String,
    pub fetch_policy: FetchPolicy,
    /// SSRF policy of `callback_url` (checked at creation and again at every send).
    pub callback_policy: FetchPolicy,
}

impl RunService {
    pub fn new(
        store: Arc<dyn RunStore>,
        data: DataDir,
        settings: ServiceSettings,
        engine_state: watch::Receiver<EngineState>,
    ) -> Self {
        let data_for_inputs = data.clone();
        RunService {
            store,
            data,
            model_id: settings.model_id,
            aliases: settings.aliases,
            max_queue: settings.max_queue,
            engine_state,
            draining: AtomicBool::new(false),
            wake: Notify::new(),
            active: Mutex::new(HashMap::new()),
            base_url: settings.base_url,
            inputs: InputLoader::new(data_for_inputs, settings.fetch_policy),
            callback_fetcher: crate::image_io::Fetcher::new(settings.callback_policy),
        }
    }

    /// Runs a store call on the blocking pool.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, RunsError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn RunStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| RunsError::Store(StoreError::Db(format!("store task failed: {e}"))))?
            .map_err(RunsError::from)
    }

    pub fn engine_state(&self) -> EngineState {
        self.engine_state.borrow().clone()
    }

    /// Starts draining: new runs are refused, the supervisor stops after the current run.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub async fn readiness(&self) -> Readiness {
        let store = self
            .blocking(|s| s.check_writable())
            .await
            .map_err(|e| e.to_string());
        Readiness {
            model: self.engine_state(),
            store,
            draining: self.is_draining(),
        }
    }

    /// The served model id for a requested id or alias.
    pub fn resolve_model(&self, requested: &str) -> Result<String, RunsError> {
        let r = requested.trim_matches('/');
        if r == self.model_id || self.aliases.iter().any(|a| a == r) {
            Ok(self.model_id.clone())
        } else {
            Err(RunsError::ModelNotFound(requested.to_string()))
        }
    }

    /// Validates, stores `data:` images as assets, and commits the queued run before returning.
    pub async fn create_run(
        &self,
        model_id: &str,
        body: &Value,
        idempotency: Option<IdemKey>,
    ) -> Result<Created, RunsError> {
        if self.is_draining() {
            return Err(RunsError::Draining);
        }
        let model_id = self.resolve_model(model_id)?;
        let defaults = match self.engine_state() {
            EngineState::Ready(d) => Some(d),
            _ => None,
        };
        let mut req =
            validate_request(body, defaults.as_ref(), || u64::from(rand::random::<u32>()))
                .map_err(RunsError::Validation)?;
        let mut assets = Vec::new();
        let mut errors = Vec::new();
        if let Some(u) = &req.callback_url {
            if let Err(e) =
                super::callback_worker::check_callback_url(&self.callback_fetcher, u).await
            {
                errors.push(e);
            }
        }
        let fields: Vec<(Vec<Value>, &mut String)> = {
            let mut v: Vec<(Vec<Value>, &mut String)> = req
                .job
                .image_urls
                .iter_mut()
                .enumerate()
                .map(|(i, u)| {
                    (
                        vec!["body".into(), "input".into(), "image_urls".into(), i.into()],
                        u,
                    )
                })
                .collect();
            if let Some(m) = req.job.mask_url.as_mut() {
                v.push((vec!["body".into(), "input".into(), "mask_url".into()], m));
            }
            v
        };
        for (loc, url) in fields {
            match self.admit_image(url).await {
                Ok(Some(asset)) => {
                    *url = format!("{ASSET_SCHEME}{}", asset.id);
                    assets.push(asset);
                }
                Ok(None) => {}
                Err(e) => errors.push(FieldError::new(&loc, "value_error", e)),
            }
        }
        if !errors.is_empty() {
            self.remove_assets(&assets);
            return Err(RunsError::Validation(errors));
        }
        let new = NewRun {
            id: Uuid::now_v7(),
            model_id,
            job: req.job,
            callback_url: req.callback_url,
            metadata: req.metadata,
            client_ref: req.client_ref,
            request_id: Uuid::now_v7().simple().to_string(),
            created_at: now(),
            assets: assets.clone(),
            idempotency,
        };
        let max_queue = self.max_queue;
        let outcome = self.blocking(move |s| s.insert_run(new, max_queue)).await;
        match outcome {
            Ok(InsertOutcome::Created(run)) => {
                self.wake.notify_one();
                Ok(Created::New(run))
            }
            Ok(InsertOutcome::Replayed(run)) => {
                self.remove_assets(&assets);
                Ok(Created::Replayed(run))
            }
            Ok(InsertOutcome::KeyConflict) => {
                self.remove_assets(&assets);
                Err(RunsError::Conflict(
                    "Idempotency-Key was already used with a different request body".into(),
                ))
            }
            Ok(InsertOutcome::QueueFull(n)) => {
                self.remove_assets(&assets);
                Err(RunsError::QueueFull(n))
            }
            Err(e) => {
                self.remove_assets(&assets);
                Err(e)
            }
        }
    }

    /// Checks one image reference; a `data:` URI becomes a new (not yet inserted) asset whose
    /// bytes are written now. Returns the message of a validation error.
    async fn admit_image(&self, url: &mut String) -> Result<Option<Asset>, String> {
        if url.starts_with("data:") || url.starts_with("DATA:") {
            let uri = std::mem::take(url);
            let parsed = tokio::task::spawn_blocking(move || {
                image_io::parse_data_uri(&uri, MAX_ASSET_BYTES as usize).map(|(mime, bytes)| {
                    let ok = image_io::sniff_format(&bytes).is_some();
                    (mime, bytes, ok)
                })
            })
            .await
            .map_err(|e| format!("data URI: {e}"))?;
            let (mime, bytes, ok) = parsed.map_err(|e| e.to_string())?;
            if !ok {
                return Err(image_io::describe_unsupported(&bytes));
            }
            let asset = Asset {
                id: Uuid::now_v7(),
                filename: "inline".into(),
                mime_type: mime,
                declared_size: bytes.len() as u64,
                size_bytes: Some(bytes.len() as u64),
                confirmed: true,
                created_at: now(),
            };
            let path = self.data.asset_path(asset.id);
            tokio::task::spawn_blocking(move || image_io::write_atomic(&path, &bytes))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("could not store the image: {e}"))?;
            return Ok(Some(asset));
        }
        if let Some(id) = asset_ref(url, &self.base_url) {
            let asset = self
                .blocking(move |s| s.get_asset(id))
                .await
                .map_err(|e| e.to_string())?;
            match asset {
                Some(a) if a.confirmed => {
                    *url = format!("{ASSET_SCHEME}{id}");
                    Ok(None)
                }
                Some(_) => Err(format!("asset {id} is not confirmed yet")),
                None => Err(format!("asset {id} not found")),
            }
        } else if url.starts_with(ASSET_SCHEME) {
            Err("malformed runflow://assets/{id} reference".into())
        } else {
            self.inputs.check_url(url).map_err(|e| e.to_string())?;
            Ok(None)
        }
    }

    fn remove_assets(&self, assets: &[Asset]) {
        for a in assets {
            let _ = std::fs::remove_file(self.data.asset_path(a.id));
        }
    }

    pub async fn get_run(&self, id: Uuid) -> Result<Run, RunsError> {
        self.blocking(move |s| s.get_run(id))
            .await?
            .ok_or_else(|| RunsError::RunNotFound(id.to_string()))
    }

    pub async fn list_runs(&self, q: ListQuery) -> Result<RunPage, RunsError> {
        self.blocking(move |s| s.list_runs(&q)).await
    }

    /// Cancels a queued run now; flags a dispatching/running one and trips its cancel token.
    pub async fn cancel_run(&self, id: Uuid) -> Result<CancelOutcome, RunsError> {
        let out = self.blocking(move |s| s.request_cancel(id, now())).await?;
        if let CancelOutcome::Requested(_) = &out {
            if let Some(t) = self
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
            {
                t.cancel();
            }
        }
        if let CancelOutcome::NotFound = out {
            return Err(RunsError::RunNotFound(id.to_string()));
        }
        Ok(out)
    }

    pub async fn create_asset(
        &self,
        filename: String,
        mime_type: String,
        size: u64,
    ) -> Result<Asset, RunsError> {
        if size > MAX_ASSET_BYTES {
            return Err(RunsError::TooLarge(size, MAX_ASSET_BYTES));
        }
        let asset = Asset {
            id: Uuid::now_v7(),
            filename,
            mime_type,
            declared_size: size,
            size_bytes: None,
            confirmed: false,
            created_at: now(),
        };
        let a = asset.clone();
        self.blocking(move |s| s.insert_asset(&a)).await?;
        Ok(asset)
    }

    /// Stores the uploaded bytes of an unconfirmed asset (atomically; a re-upload replaces them).
    pub async fn put_asset_bytes<B>(&self, id: Uuid, bytes: B) -> Result<(), RunsError>
    where
        B: AsRef<[u8]> + Send + 'static,
    {
        let asset = self
            .blocking(move |s| s.get_asset(id))
            .await?
            .ok_or_else(|| RunsError::AssetNotFound(id.to_string()))?;
        if asset.confirmed {
            return Err(RunsError::Conflict(format!(
                "asset {id} is already confirmed"
            )));
        }
        let len = bytes.as_ref().len() as u64;
        if len > MAX_ASSET_BYTES {
            return Err(RunsError::TooLarge(len, MAX_ASSET_BYTES));
        }
        let path = self.data.asset_path(id);
        tokio::task::spawn_blocking(move || image_io::write_atomic(&path, bytes.as_ref()))
            .await
            .map_err(|e| RunsError::Io(std::io::Error::other(e.to_string())))??;
        self.blocking(move |s| s.mark_asset_uploaded(id, len))
            .await?;
        Ok(())
    }

    pub async fn confirm_asset(&self, id: Uuid) -> Result<Asset, RunsError> {
        let asset = self
            .blocking(move |s| s.get_asset(id))
            .await?
            .ok_or_else(|| RunsError::AssetNotFound(id.to_string()))?;
        if asset.size_bytes.is_none() {
            return Err(RunsError::Conflict(format!(
                "asset {id} has no uploaded bytes yet; PUT them to upload_url first"
            )));
        }
        self.blocking(move |s| s.confirm_asset(id))
            .await?
            .ok_or_else(|| RunsError::AssetNotFound(id.to_string()))
    }

    /// A confirmed asset and its bytes.
    pub async fn read_asset(&self, id: Uuid) -> Result<(Asset, Vec<u8>), RunsError> {
        let asset = self
            .blocking(move |s| s.get_asset(id))
            .await?
            .filter(|a| a.confirmed)
            .ok_or_else(|| RunsError::AssetNotFound(id.to_string()))?;
        let bytes = tokio::fs::read(self.data.asset_path(id)).await?;
        Ok((asset, bytes))
    }

    /// The bytes and content type of output file `name` of run `id`.
    pub async fn read_output(&self, id: Uuid, name: &str) -> Result<(Vec<u8>, String), RunsError> {
        let run = self.get_run(id).await?;
        let img = run
            .output
            .as_ref()
            .and_then(|o| o.images.iter().find(|i| i.file.as_deref() == Some(name)))
            .ok_or_else(|| RunsError::RunNotFound(format!("{id}/{name}")))?;
        let bytes = tokio::fs::read(self.data.output_dir(id).join(name)).await?;
        Ok((bytes, img.content_type.clone()))
    }

    pub async fn idem_get(
        &self,
        scope: String,
        key: String,
    ) -> Result<Option<IdemRecord>, RunsError> {
        self.blocking(move |s| s.idem_get(&scope, &key)).await
    }

    pub async fn idem_put(
        &self,
        scope: String,
        key: String,
        rec: IdemRecord,
    ) -> Result<(), RunsError> {
        self.blocking(move |s| s.idem_put(&scope, &key, &rec)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_gc_removes_only_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::create(dir.path()).unwrap();
        let run = d.output_dir(Uuid::now_v7());
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("0.png"), b"x").unwrap();
        std::fs::write(run.join(".1.png.42.0.tmp"), b"partial").unwrap();
        std::fs::write(d.root().join("assets").join(".a.1.2.tmp"), b"partial").unwrap();
        assert_eq!(d.remove_temp_files(), 2);
        assert!(run.join("0.png").exists());
    }
}
