//! `parallax cluster start|stop|list`, `parallax controller` and `parallax engine`: flags to
//! options, and the signals that stop a process.

use std::path::PathBuf;
use std::time::Duration;

use crate::process::{runtime, stop_signal};
use anyhow::Context;
use clap::{Args, Subcommand};
use parallax_launcher::config::{self, MpiSection, Settings, SshSection};
use parallax_launcher::launchers::ssh::parse_hosts;
use parallax_launcher::{PortRange, StartOptions};
use parallax_wire::profile::{parallax_dir, Profile};

#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// Start a controller and N engines for a profile.
    Start(Box<StartArgs>),
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

/// `cluster start`: every setting may also come from the profile's `cluster.toml`; a flag given
/// here wins over the file.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Number of engines (default: the number of cores here; with --engines ssh, the hosts'
    /// counts; with --engines mpi, the number of ranks).
    #[arg(short = 'n', long = "n", value_name = "N")]
    n: Option<usize>,
    #[arg(long, default_value = "default")]
    profile: String,
    /// Which launcher starts the engines: local (this machine), ssh (--hosts) or mpi (one
    /// mpiexec; engine ids are the ranks).
    #[arg(long, value_name = "LAUNCHER", value_parser = ["local", "ssh", "mpi"])]
    engines: Option<String>,
    /// The engine hosts for --engines ssh: [user@]host[:engines], comma-separated.
    #[arg(long, value_name = "HOSTS")]
    hosts: Option<String>,
    /// The engines' kernelspec (default: python3).
    #[arg(long, value_name = "NAME")]
    kernel: Option<String>,
    /// Return once every engine is ready, leaving the cluster running in the background.
    #[arg(long)]
    daemonize: bool,
    /// Restart a dead engine kernel or engine process under its old id.
    #[arg(long)]
    restart_engines: bool,
    /// The address the controller listens on (default: 127.0.0.1; 0.0.0.0 for engines on other
    /// hosts).
    #[arg(long, value_name = "ADDR")]
    ip: Option<String>,
    /// The address or name engines dial (default: for engines on other hosts, the address of the
    /// interface facing them).
    #[arg(long, value_name = "HOST")]
    location: Option<String>,
    /// The controller's two ports, from a range (for firewalls): FIRST-LAST.
    #[arg(long, value_name = "FIRST-LAST")]
    ports: Option<String>,
    /// Seconds the engines may take to become ready (default: 60).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// The largest message frame (bytes) the controller accepts from clients and engines
    /// (default: 2 GiB).
    #[arg(long, value_name = "BYTES")]
    max_message_size: Option<u64>,
    /// Encrypt the cluster's links (CurveZMQ) even on loopback; they always are when --ip is
    /// not a loopback address.
    #[arg(long)]
    curve: bool,
    /// The parallax binary on the engine hosts (--engines ssh; default: parallax on their PATH).
    #[arg(long, value_name = "PATH")]
    remote_parallax: Option<String>,
    /// The ssh command, one word per use (--ssh=ssh --ssh=-F --ssh=/path/config).
    #[arg(long = "ssh", value_name = "WORD", allow_hyphen_values = true)]
    ssh: Vec<String>,
    /// An environment variable for the engines on the hosts (--engines ssh) or for the ranks
    /// (--engines mpi): NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// The mpiexec to run (--engines mpi; default: mpiexec on PATH), e.g. mpiexec.openmpi.
    #[arg(long, value_name = "PATH")]
    mpiexec: Option<String>,
    /// An argument for mpiexec before -n N, one word per use (--mpi-args=--oversubscribe
    /// --mpi-args=-hosts --mpi-args=a,b).
    #[arg(long = "mpi-args", value_name = "WORD", allow_hyphen_values = true)]
    mpi_args: Vec<String>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected NAME=VALUE")),
    }
}

impl StartArgs {
    /// The flags given, as settings over the profile's cluster.toml.
    fn settings(&self) -> anyhow::Result<Settings> {
        let hosts = self
            .hosts
            .as_deref()
            .map(parse_hosts)
            .transpose()
            .map_err(|reason| anyhow::anyhow!("--hosts: {reason}"))?;
        let env = (!self.env.is_empty()).then(|| self.env.iter().cloned().collect());
        Ok(Settings {
            engines: self.engines.clone(),
            n: self.n,
            kernel: self.kernel.clone(),
            ip: self.ip.clone(),
            location: self.location.clone(),
            ports: self.ports.clone(),
            restart_engines: self.restart_engines.then_some(true),
            timeout: self.timeout,
            max_message_size: self.max_message_size,
            curve: self.curve.then_some(true),
            ssh: SshSection {
                hosts,
                parallax: self.remote_parallax.clone(),
                ssh: (!self.ssh.is_empty()).then(|| self.ssh.clone()),
                env: env.clone(),
            },
            mpi: MpiSection {
                mpiexec: self.mpiexec.clone(),
                args: (!self.mpi_args.is_empty()).then(|| self.mpi_args.clone()),
                env,
            },
        })
    }
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
    /// The address or name written in the engine file, what engines dial (default: --ip, or for
    /// 0.0.0.0 this host's address).
    #[arg(long, value_name = "HOST")]
    location: Option<String>,
    /// Bind the two ports from this range (for firewalls): FIRST-LAST.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_ports)]
    ports: Option<PortRange>,
    /// How many engines may die while running one load-balanced task before it fails with
    /// TaskKilledEngines instead of running again.
    #[arg(long, default_value_t = parallax_controller::DEFAULT_MAX_TASK_DEATHS, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_task_deaths: u32,
}

fn parse_ports(text: &str) -> Result<PortRange, String> {
    text.parse()
}

#[derive(Args, Debug)]
pub struct EngineArgs {
    /// The controller's engine file (`security/controller-engine.json` in the profile); `-`
    /// reads it as one line on standard input and stops the engine when standard input closes.
    /// Without it, the engine reads $PARALLAX_CONNECTION_INFO.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// The engine's kernelspec.
    #[arg(long, default_value = "python3", value_name = "NAME")]
    kernel: String,
    /// Restart the kernel when it dies and register again under the same id.
    #[arg(long)]
    restart_kernel: bool,
    /// The id to reclaim (an engine process started again after a crash).
    #[arg(long, value_name = "N")]
    id: Option<u32>,
    /// Only check that the kernel can be found here: print it and exit (the SSH launcher asks
    /// each host this before it starts engines there).
    #[arg(long)]
    check: bool,
    /// Run as a rank of `mpiexec` (the MPI launcher): the engine's id is its rank, and its
    /// kernel starts in the rank's environment, so MPI in the kernel sees the job's ranks.
    /// Without --file, the connection info comes from $PARALLAX_CONNECTION_INFO.
    #[arg(long, conflicts_with = "id")]
    mpi: bool,
    /// Seconds registering with the controller may take once the kernel is ready.
    #[arg(long, default_value_t = parallax_engines::engine::REGISTER_TIMEOUT.as_secs_f64(), value_name = "SECONDS")]
    timeout: f64,
}

pub fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let options = parallax_controller::ControllerOptions {
        profile: Profile::named(&args.profile)?,
        ip: args.ip,
        result_limit: args.result_limit,
        max_message_size: args.max_message_size,
        curve: args.curve,
        location: args.location,
        ports: args.ports.map(|range| (range.first, range.last)),
        max_task_deaths: args.max_task_deaths,
    };
    runtime()?.block_on(parallax_controller::run(options, stop_signal()))?;
    Ok(())
}

pub fn engine(args: EngineArgs) -> anyhow::Result<()> {
    use parallax_engines::engine::{ConnectionSource, CONNECTION_INFO_VAR};
    if args.check {
        let spec = parallax_engines::kernelspec::find_kernelspec(&args.kernel)?;
        println!(
            "kernel {}: {} ({})",
            spec.name,
            spec.display_name,
            spec.argv.first().map_or("", String::as_str)
        );
        return Ok(());
    }
    let connection = match args.file {
        Some(path) if path.as_os_str() == "-" => ConnectionSource::Stdin,
        Some(path) => ConnectionSource::File(path),
        None if std::env::var_os(CONNECTION_INFO_VAR).is_some() => ConnectionSource::Env,
        None => anyhow::bail!(
            "where is the controller? give --file FILE (its security/controller-engine.json), \
             --file - with that file's contents on standard input, or the contents in \
             ${CONNECTION_INFO_VAR}"
        ),
    };
    let id = if args.mpi {
        use parallax_engines::engine::rank;
        let rank = rank::mpi_rank(|name| std::env::var(name).ok())?;
        std::thread::sleep(rank::registration_delay(rank));
        Some(rank)
    } else {
        args.id
    };
    let options = parallax_engines::engine::EngineOptions {
        connection,
        kernel: args.kernel,
        restart_kernel: args.restart_kernel,
        id,
        register_timeout: Duration::try_from_secs_f64(args.timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .context("--timeout must be a positive number of seconds")?,
    };
    runtime()?.block_on(parallax_engines::engine::run(options, stop_signal()))?;
    Ok(())
}

pub fn cluster(action: ClusterAction) -> anyhow::Result<()> {
    match action {
        ClusterAction::Start(args) => start(*args),
        ClusterAction::Stop { profile, all } => runtime()?.block_on(stop(&profile, all)),
        ClusterAction::List { json } => runtime()?.block_on(list(json)),
    }
}

fn start(args: StartArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the parallax binary")?;
    let options = config::resolve(Profile::named(&args.profile)?, exe, args.settings()?)?;
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
        "{:<20} {:<8} {:>7}  {:<8}  HOSTS",
        "PROFILE", "STATE", "ENGINES", "LAUNCHER"
    );
    for s in summaries {
        let hosts: Vec<String> = s
            .hosts
            .iter()
            .map(|(host, n)| format!("{host}:{n}"))
            .collect();
        println!(
            "{:<20} {:<8} {:>7}  {:<8}  {}",
            s.profile,
            s.state,
            s.engines,
            s.launcher,
            hosts.join(",")
        );
    }
    Ok(())
}
