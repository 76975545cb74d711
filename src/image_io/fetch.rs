//! Fetching `image_urls` / `mask_url` (and, for the callback sender, building clients) behind
//! the SSRF guard: resolve once, refuse if any answer is not allowed, connect only to the
//! checked addresses, no proxies, redirects followed by hand and re-checked, streamed body cap,
//! total timeout, result sniffed as PNG/JPEG/WebP.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use reqwest::header::{ACCEPT, LOCATION};
use reqwest::redirect::Policy;
use url::Url;

use super::decode::{describe_unsupported, sniff_format};
use super::error::ImageIoError;
use super::ssrf::{check_addr, check_parsed, check_url, display_url, CheckedUrl, FetchPolicy};

/// Name resolution, injectable for tests (e.g. a resolver that answers public-then-private).
pub trait HostResolver: Send + Sync + 'static {
    /// All addresses for `host`; `port` is the URL's port and is put into the answers.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The operating system's resolver (`getaddrinfo` via `tokio::net::lookup_host`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl HostResolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// A URL whose every resolved address passed the policy: dial only `addrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedTarget {
    pub url: Url,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// A reqwest resolver that answers only the pre-checked addresses for the one host it was built
/// for and refuses every other name, so nothing can trigger a second, unchecked lookup.
struct PinnedResolver {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl reqwest::dns::Resolve for PinnedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let asked = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let result: Result<reqwest::dns::Addrs, Box<dyn std::error::Error + Send + Sync>> =
            if asked == self.host {
                Ok(Box::new(self.addrs.clone().into_iter()))
            } else {
                Err(format!("{asked} was not checked by the SSRF guard").into())
            };
        Box::pin(std::future::ready(result))
    }
}

/// A `reqwest::ClientBuilder` that can only connect to `target.addrs`: pinned DNS, no proxy
/// (environment proxies ignored), no redirects, the policy's connect timeout. For the callback
/// sender: add its own total timeout/headers, `build()`, then POST to `target.url`.
pub fn pinned_client_builder(
    target: &CheckedTarget,
    policy: &FetchPolicy,
) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(Policy::none())
        .connect_timeout(policy.connect_timeout)
        .dns_resolver(Arc::new(PinnedResolver {
            host: target.host.clone(),
            addrs: target.addrs.clone(),
        }))
        .user_agent(concat!("editd/", env!("CARGO_PKG_VERSION")))
}

/// Fetches untrusted URLs under a [`FetchPolicy`].
#[derive(Clone)]
pub struct Fetcher {
    policy: FetchPolicy,
    resolver: Arc<dyn HostResolver>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    pub fn new(policy: FetchPolicy) -> Self {
        Self::with_resolver(policy, Arc::new(SystemResolver))
    }

    pub fn with_resolver(policy: FetchPolicy, resolver: Arc<dyn HostResolver>) -> Self {
        Self { policy, resolver }
    }

    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// Syntactic check (scheme, host, IP literal) with no I/O.
    pub fn check_url(&self, url: &str) -> Result<CheckedUrl, ImageIoError> {
        check_url(url, &self.policy)
    }

    /// Check `url`, resolve its host once, refuse if ANY answer is not allowed.
    /// Nothing is connected to.
    pub async fn resolve_checked(&self, url: &str) -> Result<CheckedTarget, ImageIoError> {
        let checked = self.check_url(url)?;
        self.resolve_checked_url(checked)
            .await
            .map_err(|e| e.with_input(display_url(url)))
    }

    async fn resolve_checked_url(&self, c: CheckedUrl) -> Result<CheckedTarget, ImageIoError> {
        let shown = display_url(c.url.as_str());
        let addrs = match c.literal {
            Some(ip) => vec![SocketAddr::new(ip, c.port)],
            None => {
                let lookup = self.resolver.resolve(&c.host, c.port);
                let answers = tokio::time::timeout(self.policy.connect_timeout, lookup)
                    .await
                    .map_err(|_| ImageIoError::FetchFailed {
                        input: shown.clone(),
                        reason: format!("resolving {} timed out", c.host),
                    })?
                    .map_err(|e| ImageIoError::FetchFailed {
                        input: shown.clone(),
                        reason: format!("cannot resolve {}: {e}", c.host),
                    })?;
                let mut addrs: Vec<SocketAddr> = Vec::with_capacity(answers.len());
                for a in answers {
                    let a = SocketAddr::new(a.ip(), c.port);
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
                if addrs.is_empty() {
                    return Err(ImageIoError::FetchFailed {
                        input: shown,
                        reason: format!("{} has no addresses", c.host),
                    });
                }
                for a in &addrs {
                    check_addr(*a, &self.policy).map_err(|why| ImageIoError::FetchForbidden {
                        input: shown.clone(),
                        reason: format!("{} resolves to {}: {why}", c.host, a.ip()),
                    })?;
                }
                addrs
            }
        };
        Ok(CheckedTarget {
            url: c.url,
            host: c.host,
            addrs,
        })
    }

    /// A client that can only reach `target`'s checked addresses (see [`pinned_client_builder`]).
    pub fn client_for(&self, target: &CheckedTarget) -> Result<reqwest::Client, ImageIoError> {
        pinned_client_builder(target, &self.policy)
            .build()
            .map_err(|e| ImageIoError::FetchFailed {
                input: display_url(target.url.as_str()),
                reason: format!("building the HTTP client failed: {e}"),
            })
    }

    /// Fetch an image: every hop checked, body capped while streaming, total timeout, result
    /// must sniff as PNG/JPEG/WebP. Errors name the URL that was asked for and why.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, ImageIoError> {
        let shown = display_url(url);
        match tokio::time::timeout(self.policy.total_timeout, self.fetch_hops(url)).await {
            Ok(r) => r.map_err(|e| e.with_input(shown)),
            Err(_) => Err(ImageIoError::FetchFailed {
                input: shown,
                reason: format!("timed out after {:?}", self.policy.total_timeout),
            }),
        }
    }

    async fn fetch_hops(&self, url: &str) -> Result<Vec<u8>, ImageIoError> {
        let mut current = self.check_url(url)?;
        let mut hop = 0u32;
        loop {
            let target = self.resolve_checked_url(current.clone()).await?;
            let client = self.client_for(&target)?;
            let resp = client
                .get(target.url.clone())
                .header(ACCEPT, "image/png,image/jpeg,image/webp;q=0.9,*/*;q=0.1")
                .send()
                .await
                .map_err(|e| fetch_failed(hop, &target.url, describe_reqwest(&e)))?;
            let status = resp.status();
            if status.is_redirection() {
                let Some(loc) = resp.headers().get(LOCATION) else {
                    return Err(fetch_failed(
                        hop,
                        &target.url,
                        format!("HTTP {status} without Location"),
                    ));
                };
                if hop >= self.policy.max_redirects {
                    return Err(ImageIoError::FetchForbidden {
                        input: String::new(),
                        reason: format!(
                            "more than {} redirects (next: {})",
                            self.policy.max_redirects,
                            String::from_utf8_lossy(loc.as_bytes())
                        ),
                    });
                }
                let loc = loc.to_str().map_err(|_| ImageIoError::FetchForbidden {
                    input: String::new(),
                    reason: "redirect Location is not valid text".into(),
                })?;
                let next = target
                    .url
                    .join(loc)
                    .map_err(|e| ImageIoError::FetchForbidden {
                        input: String::new(),
                        reason: format!("redirect to an invalid URL {loc:?} ({e})"),
                    })?;
                hop += 1;
                let shown_next = display_url(next.as_str());
                current = check_parsed(next, &self.policy).map_err(|why| {
                    ImageIoError::FetchForbidden {
                        input: String::new(),
                        reason: format!("redirect {hop} to {shown_next}: {why}"),
                    }
                })?;
                continue;
            }
            if !status.is_success() {
                return Err(fetch_failed(hop, &target.url, format!("HTTP {status}")));
            }
            return self.read_capped(resp, hop, &target.url).await;
        }
    }

    async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        hop: u32,
        url: &Url,
    ) -> Result<Vec<u8>, ImageIoError> {
        let cap = self.policy.max_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fetch_failed(hop, url, describe_reqwest(&e)))?
        {
            if body.len() + chunk.len() > cap {
                return Err(ImageIoError::TooLarge {
                    input: String::new(),
                    reason: format!("response body exceeds the {cap} byte limit"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if sniff_format(&body).is_none() {
            return Err(ImageIoError::UnsupportedFormat {
                input: String::new(),
                found: describe_unsupported(&body),
            });
        }
        Ok(body)
    }
}

/// A failure at `hop` (0 = the URL asked for; later hops name the redirect target).
fn fetch_failed(hop: u32, url: &Url, reason: String) -> ImageIoError {
    let reason = if hop == 0 {
        reason
    } else {
        format!(
            "after {hop} redirect(s), {}: {reason}",
            display_url(url.as_str())
        )
    };
    ImageIoError::FetchFailed {
        input: String::new(),
        reason,
    }
}

/// A reqwest error as one line: its kind, then its chain of sources.
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error;
    let kind = if e.is_connect() {
        "connect error"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "request error"
    };
    let mut msg = kind.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
