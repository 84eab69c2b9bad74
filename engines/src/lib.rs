//! Jupyter kernels as Parallax runs them: finding kernelspecs, launching kernels, and driving
//! them as a client.
//!
//! The parallax kernel uses this crate for its local kernel; the engine process uses it for the
//! kernel each engine owns.
//!
//! # Layout
//!
//! - [`kernelspec`]: the Jupyter data search path and kernelspec discovery.
//! - [`launch`]: writing a connection file and supervising a kernel child process.
//! - [`client`]: connecting to a kernel's channels and waiting until it is ready.
//! - [`engine`]: the engine process (`parallax engine`): registers with the controller, owns one
//!   kernel, relays requests to it and its outputs back, heartbeats, restarts a dead kernel.

pub mod client;
pub mod engine;
pub mod kernelspec;
pub mod launch;

pub use client::{ClientError, KernelClient};
pub use launch::{Exit, KernelOutput, KernelProcess, LaunchError, LaunchOptions, LinkTransport};
