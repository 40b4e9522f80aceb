//! S3 (or any S3-compatible store) as the object store, over aws-sdk-s3.
//!
//! Retries: the SDK's standard retry strategy (exponential backoff with jitter) covers
//! throttling, 5xx responses, timeouts and connection errors; what is still failing after
//! `max_attempts` surfaces as [`StoreError::Unavailable`]. Large objects are uploaded in
//! parallel multipart parts and read with parallel ranged GETs.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective, ObjectIdentifier, StorageClass,
};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};

use crate::data::store::{ChunkStore, ListedObject, StoreError};

/// Static credentials (from a Kubernetes Secret or flags).
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// How to reach a bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket ("" or "studio/prod"); no leading or trailing slash needed.
    pub prefix: String,
    /// Endpoint URL for S3-compatible stores; `None` for AWS.
    pub endpoint: Option<String>,
    /// Region; `None` takes it from the AWS environment, else us-east-1.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most non-AWS stores need.
    pub force_path_style: bool,
    /// Explicit credentials; `None` uses the standard AWS chain (environment, profile files,
    /// web identity, instance metadata).
    pub credentials: Option<S3Credentials>,
    /// A shared-credentials file to read instead of ~/.aws/credentials.
    pub credentials_file: Option<PathBuf>,
    /// Attempts per request, first one included.
    pub max_attempts: u32,
    /// First retry delay; later ones grow exponentially, with jitter.
    pub initial_backoff: Duration,
    pub connect_timeout: Duration,
    /// Limit for one attempt, and for the whole operation with its retries.
    pub attempt_timeout: Duration,
    pub operation_timeout: Duration,
    /// Objects larger than this are uploaded in parts of `part_size`.
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Objects larger than this are read with parallel ranged GETs of this size.
    pub read_part_size: u64,
    /// Send request checksums (CRC) on every upload; many S3-compatible stores refuse them,
    /// so the default is on only for AWS itself.
    pub request_checksums: bool,
    /// Sign each upload's body (SigV4 hashes it with SHA-256: about a tenth of the mount's
    /// CPU when writing). `None` signs only where nothing else checks the body in transit:
    /// neither TLS (`https` or the default AWS endpoint) nor request checksums.
    pub sign_payloads: Option<bool>,
}

impl S3Config {
    /// Defaults for `bucket`.
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            force_path_style: false,
            credentials: None,
            credentials_file: None,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(300),
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            read_part_size: 8 << 20,
            request_checksums: true,
            sign_payloads: None,
        }
    }

    /// Whether uploads sign their bodies (see [`S3Config::sign_payloads`]).
    pub fn signs_payloads(&self) -> bool {
        self.sign_payloads.unwrap_or_else(|| {
            let tls = self
                .endpoint
                .as_deref()
                .is_none_or(|e| e.to_ascii_lowercase().starts_with("https://"));
            !(tls || self.request_checksums)
        })
    }

    /// Defaults for a workspace's own bucket and prefix, with its endpoint and region.
    pub fn at(location: &crate::model::ObjectStoreLocation) -> S3Config {
        let mut cfg = S3Config::new(location.bucket.clone());
        if let Some(endpoint) = &location.endpoint {
            cfg = cfg.with_endpoint(endpoint.clone());
        }
        cfg.prefix.clone_from(&location.prefix);
        cfg.region.clone_from(&location.region);
        cfg
    }

    /// A custom endpoint (MinIO, Ceph RGW, a local server): path-style, no upload checksums.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> S3Config {
        self.endpoint = Some(endpoint.into());
        self.force_path_style = true;
        self.request_checksums = false;
        self
    }
}

/// Objects in an S3 bucket under a prefix.
#[derive(Debug, Clone)]
pub struct S3ChunkStore {
    client: Client,
    bucket: String,
    prefix: String,
    multipart_threshold: u64,
    part_size: u64,
    read_part_size: u64,
    sign_payloads: bool,
    /// The SDK's attempt timeout ends with the response head; a body read gets its own.
    attempt_timeout: Duration,
    max_attempts: u32,
}

const PARALLEL_PARTS: usize = 4;

impl S3ChunkStore {
    /// Builds the client. Nothing is sent until the first request.
    pub async fn connect(cfg: &S3Config) -> S3ChunkStore {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(cfg.max_attempts.max(1))
                    .with_initial_backoff(cfg.initial_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(cfg.connect_timeout)
                    .operation_attempt_timeout(cfg.attempt_timeout)
                    .operation_timeout(cfg.operation_timeout)
                    .build(),
            );
        // A custom endpoint without a region must not wait on the instance-metadata lookup.
        match (&cfg.region, &cfg.endpoint) {
            (Some(r), _) => loader = loader.region(Region::new(r.clone())),
            (None, Some(_))
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none() =>
            {
                loader = loader.region(Region::new("us-east-1"));
            }
            _ => {}
        }
        if let Some(c) = &cfg.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "studiodrive",
            ));
        } else if let Some(file) = &cfg.credentials_file {
            #[allow(deprecated)] // the replacement lives in aws-runtime, not re-exported here
            let files = aws_config::profile::profile_file::ProfileFiles::builder()
                .with_file(
                    aws_config::profile::profile_file::ProfileFileKind::Credentials,
                    file,
                )
                .build();
            loader = loader.profile_files(files);
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.force_path_style);
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(ep) = &cfg.endpoint {
            builder = builder.endpoint_url(ep);
        }
        if !cfg.request_checksums {
            builder = builder
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        S3ChunkStore {
            client: Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.trim_matches('/').to_string(),
            sign_payloads: cfg.signs_payloads(),
            attempt_timeout: cfg.attempt_timeout,
            max_attempts: cfg.max_attempts.max(1),
            multipart_threshold: cfg.multipart_threshold.max(5 << 20),
            part_size: cfg.part_size.max(5 << 20),
            read_part_size: cfg.read_part_size.max(64 << 10),
        }
    }

    fn object_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    async fn put_multipart(&self, key: &str, object: &str, data: Bytes) -> Result<(), StoreError> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| classify("create multipart upload", key, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let part_size = self.part_size as usize;
        let parts: Result<Vec<CompletedPart>, StoreError> =
            futures::stream::iter((0..data.len().div_ceil(part_size)).map(|i| {
                let body = data.slice(i * part_size..((i + 1) * part_size).min(data.len()));
                let number = i as i32 + 1;
                let upload_id = upload_id.clone();
                async move {
                    let request = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(object)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body));
                    let sent = if self.sign_payloads {
                        request.send().await
                    } else {
                        request.customize().disable_payload_signing().send().await
                    };
                    let out = sent.map_err(|e| classify("upload part", key, e))?;
                    Ok(CompletedPart::builder()
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .part_number(number)
                        .build())
                }
            }))
            .buffered(PARALLEL_PARTS)
            .try_collect()
            .await;
        let result = match parts {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("complete multipart upload", key, e)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Best effort: a lifecycle rule on the bucket collects what this cannot.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// GETs `range` (inclusive end) and returns the body and the object's total size.
    ///
    /// The SDK retries a request until its response head arrives; a body that fails or goes
    /// quiet after that (a dropped connection, a stalled server) is not its business. Such a
    /// read is bounded by the attempt timeout and the GET is sent again, up to the same
    /// number of attempts.
    async fn fetch_range(
        &self,
        key: &str,
        object: &str,
        start: u64,
        end: u64,
    ) -> Result<(Bytes, Option<u64>), StoreError> {
        let mut attempt = 1;
        loop {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(object)
                .range(format!("bytes={start}-{end}"))
                .send()
                .await;
            let out = match out {
                // The object ends before the range starts: nothing of it is there.
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                    return Ok((Bytes::new(), None));
                }
                other => other.map_err(|e| classify_get(key, e))?,
            };
            let total = out
                .content_range()
                .and_then(|r| r.rsplit('/').next())
                .and_then(|t| t.parse().ok());
            let failure = match tokio::time::timeout(self.attempt_timeout, out.body.collect()).await {
                Ok(Ok(body)) => return Ok((body.into_bytes(), total)),
                Ok(Err(e)) => StoreError::Unavailable {
                    op: "get",
                    key: key.to_string(),
                    message: "reading the response body failed".into(),
                    source: Some(e.into()),
                },
                Err(_) => StoreError::Unavailable {
                    op: "get",
                    key: key.to_string(),
                    message: format!(
                        "reading the response body took longer than the attempt timeout ({:?})",
                        self.attempt_timeout
                    ),
                    source: None,
                },
            };
            if attempt >= self.max_attempts {
                return Err(failure);
            }
            tracing::debug!(key, attempt, error = %failure, "GET body failed; sending the GET again");
            attempt += 1;
        }
    }
}

/// Maps a GET's error, naming the storage class of an archived object (the error says it).
fn classify_get(
    key: &str,
    err: SdkError<GetObjectError, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError {
    let class = match err.as_service_error() {
        Some(GetObjectError::InvalidObjectState(e)) => e.storage_class().map(|c| c.as_str().to_string()),
        _ => None,
    };
    match classify("get", key, err) {
        StoreError::NeedsRestore { key, source, .. } => {
            let storage_class = class.unwrap_or_else(|| "(an archive class)".into());
            tracing::warn!(
                key,
                storage_class,
                "block is in an archive storage class: restore it (S3 RestoreObject) before it can be read"
            );
            StoreError::NeedsRestore {
                key,
                storage_class,
                source,
            }
        }
        other => other,
    }
}

/// The most keys one DeleteObjects request (and one ListObjectsV2 page) may carry.
const MAX_KEYS_PER_DELETE: usize = 1000;

impl S3ChunkStore {
    /// One DeleteObjects request in quiet mode (only failures are answered): the keys of
    /// `keys` that could not be deleted, with why. A key already gone counts as deleted.
    async fn delete_objects(&self, keys: &[String]) -> Result<Vec<(String, StoreError)>, StoreError> {
        let first = keys.first().map_or("", String::as_str);
        let refused = |e: aws_sdk_s3::error::BuildError| StoreError::Failed {
            op: "delete",
            key: first.to_string(),
            message: e.to_string(),
            source: Some(e.into()),
        };
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(self.object_key(k)).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(refused)?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(refused)?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| classify("delete", first, e))?;
        let strip = self.object_key("").len();
        Ok(out
            .errors()
            .iter()
            .filter(|e| e.code() != Some("NoSuchKey"))
            .map(|e| {
                let key = e
                    .key()
                    .and_then(|k| k.get(strip..))
                    .unwrap_or_default()
                    .to_string();
                let message = format!(
                    "{}: {}",
                    e.code().unwrap_or("error"),
                    e.message().unwrap_or_default()
                );
                let error = if matches!(
                    e.code(),
                    Some("InternalError" | "SlowDown" | "ServiceUnavailable")
                ) {
                    StoreError::Unavailable {
                        op: "delete",
                        key: key.clone(),
                        message,
                        source: None,
                    }
                } else {
                    StoreError::Failed {
                        op: "delete",
                        key: key.clone(),
                        message,
                        source: None,
                    }
                };
                (key, error)
            })
            .collect())
    }
}

/// Maps an SDK error onto the store's error kinds.
fn classify<E>(
    op: &'static str,
    key: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let message = DisplayErrorContext(&err).to_string();
    let key = key.to_string();
    match &err {
        SdkError::ServiceError(_) if status == Some(404) || code.as_deref() == Some("NoSuchKey") => {
            StoreError::NotFound { key }
        }
        SdkError::ServiceError(_) if code.as_deref() == Some("InvalidObjectState") => {
            StoreError::NeedsRestore {
                key,
                storage_class: "(an archive class)".into(),
                source: Some(err.into()),
            }
        }
        SdkError::ServiceError(_)
            if status == Some(507)
                || matches!(code.as_deref(), Some("XMinioStorageFull" | "InsufficientStorage")) =>
        {
            StoreError::NoSpace {
                op,
                key,
                message,
                source: Some(err.into()),
            }
        }
        SdkError::ServiceError(_)
            if status.is_some_and(|s| s >= 500 || s == 429)
                || matches!(
                    code.as_deref(),
                    Some("SlowDown" | "RequestTimeout" | "Throttling")
                ) =>
        {
            StoreError::Unavailable {
                op,
                key,
                message,
                source: Some(err.into()),
            }
        }
        SdkError::ServiceError(_) | SdkError::ConstructionFailure(_) => StoreError::Failed {
            op,
            key,
            message,
            source: Some(err.into()),
        },
        _ => StoreError::Unavailable {
            op,
            key,
            message,
            source: Some(err.into()),
        },
    }
}

impl ChunkStore for S3ChunkStore {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let object = self.object_key(key);
            if data.len() as u64 > self.multipart_threshold {
                return self.put_multipart(key, &object, data).await;
            }
            let request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .body(ByteStream::from(data));
            let sent = if self.sign_payloads {
                request.send().await
            } else {
                request.customize().disable_payload_signing().send().await
            };
            sent.map(|_| ()).map_err(|e| classify("put", key, e))
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        async move {
            let object = self.object_key(key);
            let part = self.read_part_size;
            let (first, total) = self.fetch_range(key, &object, 0, part - 1).await?;
            let Some(total) = total.filter(|&t| t > first.len() as u64) else {
                return Ok(first);
            };
            // The rest in parallel ranged GETs, reassembled in order.
            let rest: Vec<Bytes> =
                futures::stream::iter((first.len() as u64..total).step_by(part as usize).map(|start| {
                    let end = (start + part).min(total) - 1;
                    let object = &object;
                    async move { self.fetch_range(key, object, start, end).await.map(|(b, _)| b) }
                }))
                .buffered(PARALLEL_PARTS)
                .try_collect()
                .await?;
            let mut out = BytesMut::with_capacity(total as usize);
            out.extend_from_slice(&first);
            for b in rest {
                out.extend_from_slice(&b);
            }
            if out.len() as u64 != total {
                return Err(StoreError::Unavailable {
                    op: "get",
                    key: key.to_string(),
                    message: format!("object changed size while read ({} of {total} bytes)", out.len()),
                    source: None,
                });
            }
            Ok(out.freeze())
        }
        .boxed()
    }

    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        async move {
            if range.is_empty() {
                return Ok(Bytes::new());
            }
            let object = self.object_key(key);
            self.fetch_range(key, &object, range.start, range.end - 1)
                .await
                .map(|(body, _)| body)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            match self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.object_key(key))
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => match classify("delete", key, e) {
                    StoreError::NotFound { .. } => Ok(()),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let full = self.object_key(prefix);
            let strip = if self.prefix.is_empty() {
                0
            } else {
                self.prefix.len() + 1
            };
            let mut keys = Vec::new();
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| classify("list", prefix, e))?;
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .map(|k| k.get(strip..).unwrap_or(k).to_string()),
                );
            }
            Ok(keys)
        }
        .boxed()
    }

    fn has_storage_classes(&self) -> bool {
        true
    }

    fn set_storage_class<'a>(
        &'a self,
        key: &'a str,
        class: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let object = self.object_key(key);
            // A copy onto itself with a new class: S3 keeps the bytes and (COPY) the metadata.
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(&object)
                .copy_source(format!("{}/{object}", self.bucket))
                .storage_class(StorageClass::from(class))
                .metadata_directive(MetadataDirective::Copy)
                .send()
                .await
                .map(drop)
                .map_err(|e| classify("copy", key, e))
        }
        .boxed()
    }

    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, StoreError)>, StoreError>> {
        async move {
            let mut failed = Vec::new();
            for chunk in keys.chunks(MAX_KEYS_PER_DELETE) {
                failed.extend(self.delete_objects(chunk).await?);
            }
            Ok(failed)
        }
        .boxed()
    }

    fn list_page<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListedObject>, StoreError>> {
        async move {
            let strip = self.object_key("").len();
            let mut page = Vec::new();
            let mut token = None;
            while page.len() < limit {
                let out = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(self.object_key(prefix))
                    .set_start_after(after.map(|a| self.object_key(a)))
                    .set_continuation_token(token.take())
                    .max_keys((limit - page.len()).min(MAX_KEYS_PER_DELETE) as i32)
                    .send()
                    .await
                    .map_err(|e| classify("list", prefix, e))?;
                page.extend(out.contents().iter().filter_map(|o| {
                    Some(ListedObject {
                        key: o.key()?.get(strip..)?.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                    })
                }));
                match out.next_continuation_token() {
                    Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_string()),
                    _ => break,
                }
            }
            page.truncate(limit);
            Ok(page)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}
