//! systrace's agent, the parts with no kernel in them: the policy model, the kernel
//! struct offsets read from BTF, and the event format. The loader and the CLI in
//! `main.rs` are thin layers on top.

pub mod cgroups;
pub mod events;
pub mod homes;
pub mod kernels;
pub mod learn;
pub mod offsets;
pub mod policy;
pub mod review;
pub mod telemetry;
