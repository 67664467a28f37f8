//! Files for sdrt: image decode/encode, generation metadata (A1111 infotext), output naming, grids.
//!
//! Knows bytes on disk and image buffers; never tensors, models or HTTP.
