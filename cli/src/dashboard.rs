//! `parallax dashboard`: the Clusters page, a web page to start, scale and stop clusters and
//! watch their engines (the `parallax-dashboard` crate does the work).

use crate::process::{runtime, stop_signal};
use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
#[command(
    after_help = "Every request needs the token the dashboard prints (random, or $PARALLAX_DASHBOARD_TOKEN). Stopping the dashboard leaves the clusters it started running."
)]
pub struct DashboardArgs {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    ip: String,
    /// The port (0: one the OS picks).
    #[arg(long, default_value_t = 8765, value_name = "PORT")]
    port: u16,
    /// The most engines a cluster may be started or scaled to from the page.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_engines: usize,
}

/// The environment variable that sets the token (random when unset); not a flag, so that it
/// does not show in the process list.
pub const TOKEN_VAR: &str = "PARALLAX_DASHBOARD_TOKEN";

pub fn dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    if args.max_engines == 0 {
        anyhow::bail!("--max-engines must be at least 1");
    }
    let options = parallax_dashboard::DashboardOptions {
        ip: args.ip,
        port: args.port,
        token: std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty()),
        exe: std::env::current_exe().context("cannot find the parallax binary")?,
        max_engines: args.max_engines,
    };
    let runtime = runtime()?;
    runtime.block_on(parallax_dashboard::serve(options, stop_signal()))?;
    Ok(())
}
