//! `parallax`: the one command of Parallax, thin glue over the library crates.
//!
//! Subcommands parse their flags here and hand a validated configuration to the crate that does
//! the work; nothing else lives in this binary. Errors print as one line on stderr and give a
//! non-zero exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod cluster;
mod dashboard;
mod install;
mod process;

#[derive(Parser, Debug)]
#[command(
    name = "parallax",
    version,
    about = "Interactive parallel computing for Jupyter"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the parallax Jupyter kernel, or install / uninstall its kernelspec.
    Kernel(KernelCommand),
    /// Start, stop and list clusters (a controller and its engines).
    Cluster {
        #[command(subcommand)]
        action: cluster::ClusterAction,
    },
    /// Run a cluster's controller (the cluster command starts it for you).
    Controller(cluster::ControllerArgs),
    /// Run one engine: a kernel that takes work from a controller.
    Engine(cluster::EngineArgs),
    /// Serve the Clusters page: start, scale and stop clusters, and watch their engines.
    Dashboard(dashboard::DashboardArgs),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct KernelCommand {
    #[command(subcommand)]
    action: Option<KernelAction>,
    #[command(flatten)]
    run: KernelRun,
}

#[derive(Args, Debug)]
struct KernelRun {
    /// The connection file written by the Jupyter front end.
    #[arg(short = 'f', long = "connection-file", value_name = "CONNECTION_FILE")]
    connection_file: Option<PathBuf>,
    /// The kernelspec of the local kernel that runs ordinary cells.
    #[arg(long, value_name = "NAME", default_value = "python3")]
    local_kernel: String,
    /// The cluster profile `%px` uses (default: $PARALLAX_PROFILE, else "default").
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
}

#[derive(Subcommand, Debug)]
enum KernelAction {
    /// Install the kernelspec so Jupyter offers "Python 3 (parallax)".
    Install(InstallArgs),
    /// Remove an installed parallax kernelspec.
    Uninstall {
        /// The kernelspec's name.
        #[arg(long, default_value = "parallax")]
        name: String,
    },
}

#[derive(Args, Debug)]
#[group(id = "location", multiple = false)]
struct LocationArgs {
    /// Install for this user (the default).
    #[arg(long)]
    user: bool,
    /// Install into the active Python environment (sys.prefix).
    #[arg(long)]
    sys_prefix: bool,
    /// Install under DIR/share/jupyter/kernels.
    #[arg(long, value_name = "DIR")]
    prefix: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct InstallArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// The kernelspec's name.
    #[arg(long, default_value = "parallax")]
    name: String,
    /// The name front ends show.
    #[arg(long, default_value = "Python 3 (parallax)")]
    display_name: String,
    /// The Python whose kernels and packages the kernel uses (default: the active environment's).
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// The kernelspec of the local kernel.
    #[arg(long, value_name = "NAME")]
    local_kernel: Option<String>,
    /// The cluster profile `%px` uses.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("parallax: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Kernel(KernelCommand {
            action: Some(action),
            ..
        }) => kernel_action(action),
        Command::Kernel(KernelCommand { action: None, run }) => run_kernel(run),
        Command::Cluster { action } => cluster::cluster(action),
        Command::Controller(args) => cluster::controller(args),
        Command::Engine(args) => cluster::engine(args),
        Command::Dashboard(args) => dashboard::dashboard(args),
    }
}

fn run_kernel(run: KernelRun) -> anyhow::Result<()> {
    let Some(connection_file) = run.connection_file else {
        anyhow::bail!("missing connection file: run as `parallax kernel -f CONNECTION_FILE` (Jupyter does this for you once the kernelspec is installed with `parallax kernel install`)");
    };
    let profile = run
        .profile
        .or_else(|| std::env::var("PARALLAX_PROFILE").ok())
        .unwrap_or_else(|| "default".to_owned());
    let options = parallax_kernel::KernelOptions {
        connection_file,
        local_kernel: run.local_kernel,
        profile,
    };
    process::runtime()?.block_on(parallax_kernel::run(options))?;
    Ok(())
}

fn kernel_action(action: KernelAction) -> anyhow::Result<()> {
    match action {
        KernelAction::Install(args) => {
            let location = match (args.location.sys_prefix, args.location.prefix) {
                (true, _) => install::InstallLocation::SysPrefix,
                (false, Some(dir)) => install::InstallLocation::Prefix(dir),
                (false, None) => install::InstallLocation::User,
            };
            let options = install::InstallOptions {
                location,
                name: args.name,
                display_name: args.display_name,
                python: args.python,
                local_kernel: args.local_kernel,
                profile: args.profile,
            };
            let exe = std::env::current_exe()?;
            let dir = install::install(&options, &exe)?;
            println!("Installed kernelspec {} in {}", options.name, dir.display());
            Ok(())
        }
        KernelAction::Uninstall { name } => {
            for dir in install::uninstall(&name)? {
                println!("Removed {}", dir.display());
            }
            Ok(())
        }
    }
}
