//! The `sdrt` command line as a library: the `sdrt` binary calls [`run_cli`], and the integration tests
//! build a binary of their own around it to start servers and workers as separate processes.

mod app;
mod bench;
mod convert;
mod generate;
mod inspect;
mod serve;

pub use app::{error_report, main_exit_code, run_cli};
pub use generate::demo_model;
