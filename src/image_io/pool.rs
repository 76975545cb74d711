//! Running decodes off the async runtime: `spawn_blocking`, bounded in concurrency and time.

use std::sync::Arc;
use std::time::Duration;

use image::{GrayImage, RgbImage};
use tokio::sync::Semaphore;

use super::decode::{decode_image, decode_mask, DecodeLimits};
use super::error::ImageIoError;

/// A bounded pool for decodes. Each decode holds a permit for as long as its blocking thread
/// runs — even past the timeout — so a pathological input cannot multiply CPU use by being
/// resubmitted. A decode that outlives `timeout` is reported as `INVALID_IMAGE` (it finishes
/// in the background and its result is dropped).
#[derive(Clone, Debug)]
pub struct DecodePool {
    sem: Arc<Semaphore>,
    timeout: Duration,
}

impl Default for DecodePool {
    /// Concurrency = available CPUs (at least 1), timeout 30 s.
    fn default() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(n, Duration::from_secs(30))
    }
}

impl DecodePool {
    pub fn new(max_concurrent: usize, timeout: Duration) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(max_concurrent.max(1))),
            timeout,
        }
    }

    /// [`decode_image`] on a blocking thread.
    pub async fn decode_image(
        &self,
        bytes: Arc<[u8]>,
        limits: DecodeLimits,
    ) -> Result<RgbImage, ImageIoError> {
        self.run("image", move || decode_image(&bytes, &limits))
            .await
    }

    /// [`decode_mask`] on a blocking thread.
    pub async fn decode_mask(
        &self,
        bytes: Arc<[u8]>,
        limits: DecodeLimits,
        expected: (u32, u32),
    ) -> Result<GrayImage, ImageIoError> {
        self.run("mask", move || decode_mask(&bytes, &limits, expected))
            .await
    }

    async fn run<T: Send + 'static>(
        &self,
        input: &str,
        f: impl FnOnce() -> Result<T, ImageIoError> + Send + 'static,
    ) -> Result<T, ImageIoError> {
        let permit =
            self.sem
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ImageIoError::InvalidImage {
                    input: input.into(),
                    reason: "decoder pool closed".into(),
                })?;
        let task = tokio::task::spawn_blocking(move || {
            let r = f();
            drop(permit);
            r
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(ImageIoError::InvalidImage {
                input: input.into(),
                reason: format!("the decoder failed on malformed data ({join})"),
            }),
            Err(_) => Err(ImageIoError::InvalidImage {
                input: input.into(),
                reason: format!("decoding took longer than {:?}", self.timeout),
            }),
        }
    }
}
