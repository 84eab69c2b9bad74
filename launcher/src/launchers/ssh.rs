//! Engines on other hosts over SSH: one `ssh` client per engine, running the system's OpenSSH in
//! batch mode (no prompts: keys or an agent must already work).
//!
//! The remote command is `parallax engine --file -`: the engine reads the controller's engine
//! file as the first line of its standard input, and stops when that input closes. The ssh
//! client is the supervisor's child and the supervisor holds its standard input, so whatever ends
//! the session (`cluster stop`, a killed supervisor, the ssh client killed, a dropped host)
//! ends the engine and its kernel too: nothing is left running on the host. Its stderr comes
//! back through the session into the engine's log in the profile.
//!
//! Before anything starts, each host is asked for `parallax --version` and whether it has the
//! engines' kernel (`parallax engine --check`); a host that cannot be reached, runs another
//! version or lacks the kernel stops the start with a message naming it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EngineCommand, EngineProcess, EngineSpec, Launcher, Preflight};
use crate::LaunchError;

/// How long a host may take to answer the checks before the start.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(30);

/// Options every ssh call gets: never prompt, notice a dead host within 15 s.
const SSH_OPTIONS: [&str; 7] = [
    "-T",
    "-o",
    "BatchMode=yes",
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=3",
];

/// The settings of the SSH launcher (`[ssh]` in `cluster.toml`, or flags).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSettings {
    /// The hosts and how many engines each runs.
    pub hosts: Vec<SshHost>,
    /// The `parallax` binary on the hosts (a name on their `PATH`, or a path).
    #[serde(default = "default_parallax")]
    pub parallax: String,
    /// The ssh command and its own arguments (say, `["ssh", "-F", "/path/config"]`).
    #[serde(default = "default_ssh")]
    pub ssh: Vec<String>,
    /// Environment variables set for the engines on the hosts.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_parallax() -> String {
    "parallax".into()
}

fn default_ssh() -> Vec<String> {
    vec!["ssh".into()]
}

impl SshSettings {
    /// Settings for `hosts`, with the defaults.
    pub fn new(hosts: Vec<SshHost>) -> Self {
        SshSettings {
            hosts,
            parallax: default_parallax(),
            ssh: default_ssh(),
            env: BTreeMap::new(),
        }
    }

    /// How many engines the hosts run together.
    pub fn engines(&self) -> usize {
        self.hosts.iter().map(|h| h.engines).sum()
    }
}

/// One host: `[user@]host[:engines]` (one engine when no count is given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SshHost {
    /// What ssh is given: `host`, `user@host`, or a `Host` alias of the ssh configuration.
    pub target: String,
    pub engines: usize,
}

impl FromStr for SshHost {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (target, engines) = match text.rsplit_once(':') {
            Some((target, count)) if !target.ends_with(']') || !count.is_empty() => {
                let engines = count.parse::<usize>().map_err(|_| {
                    format!("{text:?}: the engine count after ':' must be a number")
                })?;
                (target, engines)
            }
            _ => (text, 1),
        };
        if target.is_empty() || target.starts_with('-') || target.contains(char::is_whitespace) {
            return Err(format!("{text:?} is not a host ([user@]host[:engines])"));
        }
        if engines == 0 {
            return Err(format!("{text:?}: a host runs at least 1 engine"));
        }
        Ok(SshHost {
            target: target.to_owned(),
            engines,
        })
    }
}

impl TryFrom<String> for SshHost {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<SshHost> for String {
    fn from(host: SshHost) -> String {
        format!("{}:{}", host.target, host.engines)
    }
}

/// Hosts from `node1:2,user@node2:4`.
pub fn parse_hosts(text: &str) -> Result<Vec<SshHost>, String> {
    let hosts = text
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<SshHost>, String>>()?;
    if hosts.is_empty() {
        return Err("no hosts given ([user@]host[:engines], comma-separated)".into());
    }
    Ok(hosts)
}

/// The SSH launcher.
#[derive(Debug)]
pub struct Ssh {
    settings: SshSettings,
}

impl Ssh {
    pub fn new(settings: SshSettings) -> Self {
        Ssh { settings }
    }

    /// The host of `slot`: the hosts' own counts first, in order; past them (a cluster scaled
    /// up), round the hosts again.
    fn host_of(&self, slot: usize) -> &SshHost {
        let hosts = &self.settings.hosts;
        let mut first = 0;
        for host in hosts {
            if slot < first + host.engines {
                return host;
            }
            first += host.engines;
        }
        &hosts[(slot - first) % hosts.len()]
    }

    /// The ssh client whose session runs the engine of `slot`.
    fn command(&self, slot: usize, spec: &EngineSpec) -> EngineCommand {
        let host = self.host_of(slot);
        let mut engine = vec!["engine".to_owned(), "--file".into(), "-".into()];
        engine.extend(spec.engine_args(Some(slot)));
        let (program, args) = self.ssh(&host.target, format!("exec {}", self.parallax(&engine)));
        EngineCommand {
            program,
            args,
            stdin: Some(spec.connection.clone()),
            host: host.target.clone(),
            env: Vec::new(),
        }
    }

    /// `ssh [options] target -- command`: ssh hands `command` to the remote user's shell.
    fn ssh(&self, target: &str, command: String) -> (PathBuf, Vec<String>) {
        let (program, own) = self
            .settings
            .ssh
            .split_first()
            .map_or(("ssh", &[][..]), |(p, rest)| (p.as_str(), rest));
        let mut args: Vec<String> = own.to_vec();
        args.extend(SSH_OPTIONS.iter().map(|s| (*s).to_owned()));
        args.extend([target.to_owned(), "--".into(), command]);
        (PathBuf::from(program), args)
    }

    /// `env K=V ... parallax ARGS` as one shell command line.
    fn parallax(&self, args: &[String]) -> String {
        let mut words = vec!["env".to_owned()];
        words.extend(self.settings.env.iter().map(|(k, v)| format!("{k}={v}")));
        words.push(self.settings.parallax.clone());
        words.extend(args.iter().cloned());
        words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Asks `host` for its Parallax version and the kernel.
    async fn check_host(&self, target: &str, kernel: &str) -> Result<(), LaunchError> {
        let failed = |reason: String| LaunchError::Host {
            host: target.to_owned(),
            reason,
        };
        let ours = format!("parallax {}", env!("CARGO_PKG_VERSION"));
        let words = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        let script = format!(
            "{} && {}",
            self.parallax(&words(&["--version"])),
            self.parallax(&words(&["engine", "--check", "--kernel", kernel]))
        );
        let (program, args) = self.ssh(target, script);
        let run = tokio::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(PREFLIGHT_TIMEOUT, run).await {
            Err(_) => {
                return Err(failed(format!(
                    "no answer over ssh within {PREFLIGHT_TIMEOUT:?}"
                )))
            }
            Ok(Err(error)) => {
                return Err(failed(format!("cannot run {}: {error}", program.display())))
            }
            Ok(Ok(output)) => output,
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let theirs = stdout.lines().next().unwrap_or_default().trim();
        if output.status.code() == Some(255) {
            return Err(failed(format!("ssh failed: {}", stderr.trim())));
        }
        if !theirs.starts_with("parallax ") {
            return Err(failed(format!(
                "`{} --version` did not run there ({}): install Parallax on the host or set the \
                 path of its binary (`parallax` under [ssh] in cluster.toml, or --remote-parallax)",
                self.settings.parallax,
                last_line(&stderr).unwrap_or("no output")
            )));
        }
        if theirs != ours {
            return Err(failed(format!(
                "it runs {theirs}, this machine {ours}: install the same version there"
            )));
        }
        if !output.status.success() {
            return Err(failed(format!(
                "no kernel {kernel:?} there: {}",
                last_line(&stderr).unwrap_or("parallax engine --check failed")
            )));
        }
        Ok(())
    }
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

impl Launcher for Ssh {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn remote(&self) -> bool {
        true
    }

    fn engine_host(&self) -> Option<String> {
        let target = &self.settings.hosts.first()?.target;
        // `ssh -G` prints the configuration ssh would use, `hostname` resolved from any alias.
        let (program, own) = self.settings.ssh.split_first()?;
        let output = std::process::Command::new(program)
            .args(own)
            .args(["-G", target])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        let config = String::from_utf8_lossy(&output.stdout);
        let hostname = config
            .lines()
            .find_map(|line| line.strip_prefix("hostname "))
            .map(|name| name.trim().to_owned());
        hostname.or_else(|| Some(target.rsplit('@').next()?.to_owned()))
    }

    fn preflight<'a>(&'a self, kernel: &'a str) -> Preflight<'a> {
        Box::pin(async move {
            let mut targets: Vec<&str> = Vec::new();
            for host in &self.settings.hosts {
                if !targets.contains(&host.target.as_str()) {
                    targets.push(&host.target);
                }
            }
            let checks = targets.iter().map(|target| self.check_host(target, kernel));
            for outcome in futures::future::join_all(checks).await {
                outcome?;
            }
            Ok(())
        })
    }

    fn commands(&self, slots: Range<usize>, spec: &EngineSpec) -> Vec<EngineProcess> {
        EngineProcess::per_slot(slots, |slot| self.command(slot, spec))
    }
}

/// `text` as one word for a POSIX shell.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:@,+%".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EngineSpec {
        EngineSpec {
            kernel: "python3".into(),
            restart_kernel: false,
            id: None,
            timeout: Duration::from_secs(30),
            file: PathBuf::from("/p/security/controller-engine.json"),
            connection: "{\"url\": \"tcp://10.0.0.1:5\"}".into(),
        }
    }

    #[test]
    fn hosts_parse_with_and_without_counts() {
        let hosts = parse_hosts("node1:2, user@node2:4,node3").expect("valid");
        let pairs: Vec<(&str, usize)> = hosts
            .iter()
            .map(|h| (h.target.as_str(), h.engines))
            .collect();
        assert_eq!(pairs, [("node1", 2), ("user@node2", 4), ("node3", 1)]);
        for bad in ["", "node:x", "node:0", "-oProxyCommand=x", "a b:2"] {
            assert!(parse_hosts(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slots_fill_each_host_then_go_round() {
        let ssh = Ssh::new(SshSettings::new(parse_hosts("a:2,b:1").expect("valid")));
        let hosts: Vec<&str> = (0..6).map(|s| ssh.host_of(s).target.as_str()).collect();
        assert_eq!(hosts, ["a", "a", "b", "a", "b", "a"]);
    }

    #[test]
    fn the_engine_command_reads_its_connection_on_stdin_under_one_quoted_remote_command() {
        let mut settings = SshSettings::new(parse_hosts("user@node1:1").expect("valid"));
        settings.ssh = vec!["ssh".into(), "-F".into(), "/t/config".into()];
        settings.parallax = "/opt/parallax bin/parallax".into();
        settings
            .env
            .insert("PATH".into(), "/opt/venv/bin:/usr/bin".into());
        let command = Ssh::new(settings).command(0, &spec());
        assert_eq!(command.program, PathBuf::from("ssh"));
        assert_eq!(command.host, "user@node1");
        assert_eq!(command.stdin.as_deref(), Some(spec().connection.as_str()));
        let args = command.args;
        assert_eq!(&args[..3], ["-F", "/t/config", "-T"]);
        let at = args.iter().position(|a| a == "--").expect("--");
        assert_eq!(args[at - 1], "user@node1");
        assert_eq!(
            args[at + 1],
            "exec env PATH=/opt/venv/bin:/usr/bin '/opt/parallax bin/parallax' engine --file - \
             --kernel python3 --timeout 30 --id 0"
        );
        assert_eq!(args.len(), at + 2);
    }

    #[test]
    fn shell_quoting_keeps_words_whole() {
        assert_eq!(shell_quote("plain-word_1.0"), "plain-word_1.0");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn settings_read_from_toml_with_defaults() {
        let settings: SshSettings =
            toml::from_str("hosts = [\"node1:2\", \"node2\"]\n").expect("valid");
        assert_eq!(settings.engines(), 3);
        assert_eq!(settings.parallax, "parallax");
        assert_eq!(settings.ssh, ["ssh"]);
        assert!(toml::from_str::<SshSettings>("hosts = [\"node:x\"]\n").is_err());
    }
}
