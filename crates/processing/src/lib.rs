//! Pure Stable Diffusion pipeline stages on `ndarray`: prompt syntax, conditioning, seeds and noise,
//! samplers and schedules, txt2img / img2img / inpaint / hires.
//!
//! Models are reached only through traits implemented by `sdrt-models`; this crate never sees ONNX Runtime.
