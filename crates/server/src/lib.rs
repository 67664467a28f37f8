//! The A1111-compatible HTTP API (`/sdapi/v1`) of sdrt, with asynchronous jobs.
