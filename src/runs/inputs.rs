//! Turning a job's image references into decoded images at dispatch: `runflow://assets/{id}`
//! (uploads and admitted `data:` URIs) are read from the data dir, `http(s)` URLs go through
//! image_io's SSRF-guarded fetcher; decoding runs on image_io's bounded blocking pool.

use std::sync::Arc;

use image::{GrayImage, RgbImage};
use uuid::Uuid;

use super::job::EditJob;
use super::service::{DataDir, MAX_ASSET_BYTES};
use crate::image_io::{self, DecodeLimits, DecodePool, FetchPolicy, Fetcher, ImageIoError};

/// Scheme prefix of stored assets, as Runflow spells it.
pub const ASSET_SCHEME: &str = "runflow://assets/";

/// The asset id of `runflow://assets/{id}` or of an asset URL this server handed out
/// (`{base_url}/v1/assets/{id}/content…`).
pub fn asset_ref(url: &str, base_url: &str) -> Option<Uuid> {
    if let Some(rest) = url.strip_prefix(ASSET_SCHEME) {
        return Uuid::parse_str(rest.trim_end_matches('/')).ok();
    }
    let rest = url.strip_prefix(base_url)?.strip_prefix("/v1/assets/")?;
    let (id, tail) = rest.split_once('/')?;
    if tail == "content" || tail.starts_with("content?") {
        Uuid::parse_str(id).ok()
    } else {
        None
    }
}

/// Loads and decodes the images of a job.
#[derive(Clone)]
pub struct InputLoader {
    data: DataDir,
    pool: DecodePool,
    limits: DecodeLimits,
    fetcher: Arc<Fetcher>,
}

impl std::fmt::Debug for InputLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputLoader")
    }
}

impl InputLoader {
    pub fn new(data: DataDir, policy: FetchPolicy) -> Self {
        InputLoader {
            data,
            pool: DecodePool::default(),
            limits: DecodeLimits::default(),
            fetcher: Arc::new(Fetcher::new(policy)),
        }
    }

    /// Admission-time URL check without I/O (scheme, port, IP literals); DNS answers are
    /// checked again when the image is fetched.
    pub fn check_url(&self, url: &str) -> Result<(), ImageIoError> {
        self.fetcher.check_url(url).map(|_| ())
    }

    async fn bytes(&self, url: &str) -> Result<Vec<u8>, ImageIoError> {
        if let Some(id) = url
            .strip_prefix(ASSET_SCHEME)
            .and_then(|r| Uuid::parse_str(r).ok())
        {
            return tokio::fs::read(self.data.asset_path(id))
                .await
                .map_err(|e| ImageIoError::FetchFailed {
                    input: url.to_string(),
                    reason: format!("stored asset unreadable: {e}"),
                });
        }
        if url.starts_with("data:") {
            return image_io::parse_data_uri(url, MAX_ASSET_BYTES as usize).map(|(_, b)| b);
        }
        self.fetcher.fetch(url).await
    }

    /// The job's images (in order) and mask, decoded; errors name the field (`image_urls[1]`).
    pub async fn load(
        &self,
        job: &EditJob,
    ) -> Result<(Vec<RgbImage>, Option<GrayImage>), ImageIoError> {
        let mut images = Vec::with_capacity(job.image_urls.len());
        for (i, url) in job.image_urls.iter().enumerate() {
            let label = format!("image_urls[{i}]");
            let bytes = self
                .bytes(url)
                .await
                .map_err(|e| e.with_input(label.clone()))?;
            let img = self
                .pool
                .decode_image(bytes.into(), self.limits)
                .await
                .map_err(|e| e.with_input(label))?;
            images.push(img);
        }
        let mask = match &job.mask_url {
            None => None,
            Some(url) => {
                let bytes = self
                    .bytes(url)
                    .await
                    .map_err(|e| e.with_input("mask_url"))?;
                let expected = images.first().map(|i| i.dimensions()).unwrap_or((0, 0));
                Some(
                    self.pool
                        .decode_mask(bytes.into(), self.limits, expected)
                        .await
                        .map_err(|e| e.with_input("mask_url"))?,
                )
            }
        };
        Ok((images, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_refs() {
        let id = Uuid::now_v7();
        assert_eq!(
            asset_ref(&format!("runflow://assets/{id}"), "http://h:1"),
            Some(id)
        );
        assert_eq!(
            asset_ref(
                &format!("http://h:1/v1/assets/{id}/content?expires=1&sig=x"),
                "http://h:1"
            ),
            Some(id)
        );
        assert_eq!(
            asset_ref(
                &format!("http://other/v1/assets/{id}/content"),
                "http://h:1"
            ),
            None
        );
        assert_eq!(asset_ref("runflow://assets/nope", "http://h:1"), None);
    }
}
