//! Wire types of sdrt's A1111-compatible `/sdapi/v1` API: requests, responses, sampler and scheduler names.
//!
//! This is the bottom of the crate stack: it knows serde and nothing about files, models or tensors.
//!
//! - [`Txt2ImgRequest`] / [`Img2ImgRequest`]: every field optional with A1111 v1.10's defaults, `null` = default,
//!   unknown fields kept in `extra`; [`Txt2ImgRequest::validate`] reports every bad field with its fix.
//! - [`ImageResponse`] with [`GenerationInfo`] (the double-encoded `info` string), [`ProgressResponse`],
//!   [`PngInfoResponse`], [`Options`], [`SamplerItem`], [`SchedulerItem`].
//! - [`SAMPLERS`] / [`SCHEDULERS`]: A1111's name tables; [`resolve_sampler_and_scheduler`] splits legacy names
//!   such as "DPM++ 2M Karras".

mod error;
mod extras;
mod jobs;
mod names;
mod request;
mod response;
mod validate;

pub use error::{Error, FieldProblem, Result};
pub use extras::{
    ExtrasBatchImagesRequest, ExtrasBatchImagesResponse, ExtrasFile, ExtrasOptions, ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
};
pub use jobs::{JobAccepted, JobKind, JobState, JobStatus, JobSubmission, WorkerStatus};
pub use names::{
    API_DEFAULT_SAMPLER, SAMPLERS, SCHEDULERS, SamplerChoice, SamplerFamily, SamplerInfo, SchedulerInfo,
    automatic_scheduler, find_sampler, find_scheduler, resolve_sampler_and_scheduler, sampler_names, scheduler_names,
};
pub use request::{ExtraFields, GenerationRequest, Img2ImgRequest, Txt2ImgRequest};
pub use response::{
    EmbeddingItem, EmbeddingsResponse, ErrorResponse, GenerationInfo, ImageResponse, LatentUpscaleModeItem, LoraItem,
    Options, PngInfoRequest, PngInfoResponse, ProgressRequest, ProgressResponse, ProgressState, PromptStyleItem,
    SamplerItem, SchedulerItem, SdModelItem, SdVaeItem, UpscalerItem, sampler_items, scheduler_items,
};
pub use validate::{MIN_SIDE, RequestLimits, ValidatedSampling};
