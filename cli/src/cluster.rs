//! `parallax cluster start|stop|list`, `parallax controller` and `parallax engine`: flags to
//! options, and the signals that stop a process.

use std::path::PathBuf;
use std::time::Duration;

use crate::process::{runtime, stop_signal};
use anyhow::Context;
use clap::{Args, Subcommand};
use parallax_launcher::StartOptions;
use parallax_wire::profile::{parallax_dir, Profile};

#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// Start a controller and N engines for a profile.
    Start(StartArgs),
    /// Stop a profile's cluster, leaving no process behind.
    Stop {
        /// The profile whose cluster to stop.
        #[arg(long, default_value = "default", conflicts_with = "all")]
        profile: String,
        /// Stop every running cluster.
        #[arg(long)]
        all: bool,
    },
    /// List profiles and their clusters.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Number of engines (default: the number of cores).
    #[arg(short = 'n', long = "n", value_name = "N")]
    n: Option<usize>,
    #[arg(long, default_value = "default")]
    profile: String,
    /// The engines' kernelspec.
    #[arg(long, default_value = "python3", value_name = "NAME")]
    kernel: String,
    /// Return once every engine is ready, leaving the cluster running in the background.
    #[arg(long)]
    daemonize: bool,
    /// Restart a dead engine kernel or engine process under its old id.
    #[arg(long)]
    restart_engines: bool,
    /// The address the controller listens on (0.0.0.0 to accept engines from other hosts).
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    ip: String,
    /// Seconds the engines may take to become ready.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    timeout: f64,
    /// The largest message frame (bytes) the controller accepts from clients and engines
    /// (default: 2 GiB).
    #[arg(long, value_name = "BYTES")]
    max_message_size: Option<u64>,
    /// Encrypt the cluster's links (CurveZMQ) even on loopback; they always are when --ip is
    /// not a loopback address.
    #[arg(long)]
    curve: bool,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[arg(long, default_value = "default")]
    profile: String,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    ip: String,
    /// The largest apply result (bytes) kept in the task database for later `get_result`.
    #[arg(long, default_value_t = parallax_controller::DEFAULT_RESULT_LIMIT, value_name = "BYTES")]
    result_limit: usize,
    /// The largest message frame (bytes) a client or engine may send; a peer announcing a
    /// larger one is disconnected.
    #[arg(long, default_value_t = parallax_controller::DEFAULT_MAX_MESSAGE_SIZE, value_name = "BYTES")]
    max_message_size: u64,
    /// Encrypt the links (CurveZMQ) even on loopback; they always are when --ip is not a
    /// loopback address.
    #[arg(long)]
    curve: bool,
}

#[derive(Args, Debug)]
pub struct EngineArgs {
    /// The controller's engine file (`security/controller-engine.json` in the profile).
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// The engine's kernelspec.
    #[arg(long, default_value = "python3", value_name = "NAME")]
    kernel: String,
    /// Restart the kernel when it dies and register again under the same id.
    #[arg(long)]
    restart_kernel: bool,
    /// The id to reclaim (an engine process started again after a crash).
    #[arg(long, value_name = "N")]
    id: Option<u32>,
}

pub fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let options = parallax_controller::ControllerOptions {
        profile: Profile::named(&args.profile)?,
        ip: args.ip,
        result_limit: args.result_limit,
        max_message_size: args.max_message_size,
        curve: args.curve,
    };
    runtime()?.block_on(parallax_controller::run(options, stop_signal()))?;
    Ok(())
}

pub fn engine(args: EngineArgs) -> anyhow::Result<()> {
    let options = parallax_engines::engine::EngineOptions {
        file: args.file,
        kernel: args.kernel,
        restart_kernel: args.restart_kernel,
        id: args.id,
    };
    runtime()?.block_on(parallax_engines::engine::run(options, stop_signal()))?;
    Ok(())
}

pub fn cluster(action: ClusterAction) -> anyhow::Result<()> {
    match action {
        ClusterAction::Start(args) => start(args),
        ClusterAction::Stop { profile, all } => runtime()?.block_on(stop(&profile, all)),
        ClusterAction::List { json } => runtime()?.block_on(list(json)),
    }
}

fn start(args: StartArgs) -> anyhow::Result<()> {
    let n = match args.n {
        Some(0) => anyhow::bail!("-n must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    let options = StartOptions {
        profile: Profile::named(&args.profile)?,
        n,
        kernel: args.kernel,
        restart_engines: args.restart_engines,
        ip: args.ip,
        exe: std::env::current_exe().context("cannot find the parallax binary")?,
        timeout: Duration::from_secs_f64(args.timeout),
        max_message_size: args.max_message_size,
        curve: args.curve,
    };
    let runtime = runtime()?;
    if args.daemonize {
        let engines = runtime.block_on(parallax_launcher::start_daemon(&options))?;
        print_ready(&options, &engines);
        return Ok(());
    }
    runtime.block_on(async {
        let supervise = parallax_launcher::supervise(&options, stop_signal());
        tokio::pin!(supervise);
        tokio::select! {
            outcome = &mut supervise => return outcome.map_err(anyhow::Error::from),
            ready = parallax_launcher::wait_ready(&options, None) => match ready {
                Ok(engines) => print_ready(&options, &engines),
                Err(error) => eprintln!("parallax: {error}"),
            },
        }
        supervise.await.map_err(anyhow::Error::from)
    })
}

fn print_ready(options: &StartOptions, engines: &[parallax_wire::cluster::EngineInfo]) {
    let ids: Vec<String> = engines.iter().map(|e| e.id.to_string()).collect();
    println!(
        "Cluster {:?} ready: {} engines (ids {})",
        options.profile.name(),
        engines.len(),
        ids.join(", ")
    );
}

async fn stop(profile: &str, all: bool) -> anyhow::Result<()> {
    let profiles = if all {
        Profile::all_in(&parallax_dir()?)
            .into_iter()
            .filter(|p| {
                !matches!(
                    parallax_launcher::state::status(p),
                    parallax_launcher::ClusterStatus::Stopped
                )
            })
            .collect()
    } else {
        vec![Profile::named(profile)?]
    };
    if all && profiles.is_empty() {
        println!("No cluster is running.");
    }
    for profile in profiles {
        let stopped = parallax_launcher::stop(&profile, Duration::from_secs(5)).await?;
        println!(
            "Stopped cluster {:?} ({} processes)",
            profile.name(),
            stopped.pids().len()
        );
    }
    Ok(())
}

async fn list(json: bool) -> anyhow::Result<()> {
    let summaries = parallax_launcher::list(&parallax_dir()?).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:>7}  LAUNCHER",
        "PROFILE", "STATE", "ENGINES"
    );
    for s in summaries {
        println!(
            "{:<20} {:<8} {:>7}  {}",
            s.profile, s.state, s.engines, s.launcher
        );
    }
    Ok(())
}
