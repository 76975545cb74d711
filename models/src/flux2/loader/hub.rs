//! Resolving a Hugging Face Hub repo id to a local snapshot folder in the hub cache.
//!
//! Follows the cache layout of `huggingface_hub` (`<cache>/models--owner--name/{refs,blobs,
//! snapshots/<commit>}`) through hf-hub 0.4.3's sync API. hf-hub 0.4.3 itself reads `HF_HOME`
//! (in `Cache::from_env`, used here when no cache folder is given) but has **no offline mode**:
//! `ApiRepo::get` returns a cached file only if `refs/<revision>` resolves, and otherwise goes
//! to the network. So offline resolution (and the fall-back when the hub cannot be reached)
//! reads the cache folder directly, as `huggingface_hub` does with `HF_HUB_OFFLINE=1`.
//!
//! Online, the repo's file list and commit come from one `info()` call; only the files a
//! FLUX.2 pipeline needs are fetched (configs, tokenizer files, and per component either the
//! sharded index and its shards or the single `*.safetensors`), each into the snapshot of
//! that commit, so the snapshot folder is then an ordinary diffusers folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::{ModelError, Result};

/// How hub repo ids are resolved. `Default` = hf-hub's defaults: cache in `$HF_HOME/hub`
/// (else `~/.cache/huggingface/hub`), online, progress bars on.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache folder (the one holding `models--owner--name/`, like `HF_HUB_CACHE`).
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network; resolve from the cache only (`HF_HUB_OFFLINE=1` semantics).
    /// The server sets this from its own config.
    pub offline: bool,
    /// Show download progress bars.
    pub progress: bool,
    /// Hub endpoint (default `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// Access token for gated repos (default: hf-hub's `<cache>/../token`).
    pub token: Option<String>,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            offline: false,
            progress: true,
            endpoint: None,
            token: None,
        }
    }
}

impl HubOptions {
    /// Offline resolution from `cache_dir` (tests, air-gapped boxes).
    pub fn offline_from(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: Some(cache_dir.into()),
            offline: true,
            progress: false,
            ..Self::default()
        }
    }

    fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(dir) => Cache::new(dir.clone()),
            None => Cache::from_env(),
        }
    }
}

/// Component folders a FLUX.2 [klein] pipeline loads, with their weight-file stem.
const COMPONENTS: [(&str, Option<&str>); 5] = [
    ("scheduler", None),
    ("tokenizer", None),
    ("text_encoder", Some("model")),
    ("transformer", Some("diffusion_pytorch_model")),
    ("vae", Some("diffusion_pytorch_model")),
];

const SMALL_EXTS: [&str; 5] = [".json", ".txt", ".jinja", ".model", ".tiktoken"];

fn hub_err(repo: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Hub(format!("{repo}: {e}"))
}

fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// The snapshot folder of `repo_id@revision` in the cache, if the cache knows the revision.
pub fn cached_snapshot(cache: &Cache, repo_id: &str, revision: &str) -> Option<PathBuf> {
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let root = cache.path().join(repo.folder_name());
    let snapshots = root.join("snapshots");
    if is_commit_hash(revision) && snapshots.join(revision).is_dir() {
        return Some(snapshots.join(revision));
    }
    let commit = std::fs::read_to_string(root.join("refs").join(revision)).ok()?;
    let dir = snapshots.join(commit.trim());
    dir.is_dir().then_some(dir)
}

/// Returns a local diffusers-layout folder for `repo_id@revision` (default `main`).
pub fn resolve_snapshot(
    repo_id: &str,
    revision: Option<&str>,
    opts: &HubOptions,
) -> Result<PathBuf> {
    let revision = revision.unwrap_or("main");
    let cache = opts.cache();
    if opts.offline {
        return cached_snapshot(&cache, repo_id, revision).ok_or_else(|| {
            hub_err(
                repo_id,
                format!(
                    "offline and revision `{revision}` is not in the hub cache {}",
                    cache.path().display()
                ),
            )
        });
    }
    let mut builder = ApiBuilder::from_cache(cache.clone()).with_progress(opts.progress);
    if let Some(ep) = &opts.endpoint {
        builder = builder.with_endpoint(ep.clone());
    }
    if opts.token.is_some() {
        builder = builder.with_token(opts.token.clone());
    }
    let api = builder.build().map_err(|e| hub_err(repo_id, e))?;
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let api_repo = api.repo(repo);
    let info = match api_repo.info() {
        Ok(info) => info,
        Err(e) => {
            // As huggingface_hub: when the hub cannot be reached, use what the cache has.
            if let Some(dir) = cached_snapshot(&cache, repo_id, revision) {
                tracing::warn!(repo = repo_id, error = %e, "hub unreachable, using the cached snapshot");
                return Ok(dir);
            }
            return Err(hub_err(
                repo_id,
                format!("cannot list revision `{revision}`: {e}"),
            ));
        }
    };
    let listed: BTreeSet<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let snapshot = cache
        .path()
        .join(Repo::new(repo_id.to_string(), RepoType::Model).folder_name())
        .join("snapshots")
        .join(&info.sha);
    let fetch = |file: &str| -> Result<PathBuf> {
        let local = snapshot.join(file);
        if local.is_file() {
            return Ok(local);
        }
        tracing::info!(repo = repo_id, file, "downloading");
        let got = download(&api_repo, repo_id, file)?;
        if got != local {
            return Err(hub_err(
                repo_id,
                format!("revision `{revision}` moved during the download of {file}; retry"),
            ));
        }
        Ok(got)
    };
    if !listed.contains("model_index.json") {
        return Err(hub_err(
            repo_id,
            "no model_index.json: not a diffusers pipeline repo",
        ));
    }
    fetch("model_index.json")?;
    for (folder, stem) in COMPONENTS {
        let prefix = format!("{folder}/");
        let in_folder: Vec<&String> = listed.iter().filter(|f| f.starts_with(&prefix)).collect();
        for f in &in_folder {
            if SMALL_EXTS.iter().any(|x| f.ends_with(x)) {
                fetch(f)?;
            }
        }
        let Some(stem) = stem else { continue };
        let index = format!("{folder}/{stem}.safetensors.index.json");
        let single = format!("{folder}/{stem}.safetensors");
        if listed.contains(&index) {
            let files = super::weights::WeightFiles::index_shard_names(&snapshot.join(&index))?;
            for shard in files {
                fetch(&format!("{folder}/{shard}"))?;
            }
        } else if listed.contains(&single) {
            fetch(&single)?;
        } else {
            let others: Vec<&&String> = in_folder
                .iter()
                .filter(|f| f.ends_with(".safetensors"))
                .collect();
            if others.len() != 1 {
                return Err(hub_err(
                    repo_id,
                    format!("{folder}/: no {stem}.safetensors(.index.json); found {others:?}"),
                ));
            }
            fetch(others[0])?;
        }
    }
    if !is_commit_hash(revision) {
        // Point refs/<revision> at the resolved commit so a later offline run finds it.
        let refs = snapshot
            .parent()
            .and_then(Path::parent)
            .map(|r| r.join("refs"));
        if let Some(refs) = refs {
            let r = refs.join(revision);
            let write = r
                .parent()
                .map(std::fs::create_dir_all)
                .transpose()
                .and_then(|_| std::fs::write(&r, &info.sha));
            write.map_err(|e| ModelError::Io {
                path: r.clone(),
                source: e,
            })?;
        }
    }
    Ok(snapshot)
}

fn download(api_repo: &ApiRepo, repo_id: &str, file: &str) -> Result<PathBuf> {
    api_repo
        .download(file)
        .map_err(|e| hub_err(repo_id, format!("download of {file} failed: {e}")))
}
