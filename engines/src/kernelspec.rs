//! Jupyter kernelspec discovery: which kernels are installed, and how to start one.
//!
//! A kernelspec is a directory `<data_dir>/kernels/<name>/` holding a `kernel.json` that says how
//! to launch a kernel (`argv`, `env`, `interrupt_mode`, ...). This module finds them the way
//! `jupyter_core.paths.jupyter_path` and `jupyter_client.kernelspec.KernelSpecManager` do, so that
//! `--local-kernel NAME` (or an engine's kernel) means the same kernel that `jupyter kernelspec
//! list` shows, and turns a spec into the command line that starts it.
//!
//! # Search path
//!
//! [`data_dirs`] lists, highest priority first:
//!
//! 1. each entry of `JUPYTER_PATH`;
//! 2. the *user* dirs: `JUPYTER_DATA_DIR`, else `$XDG_DATA_HOME/jupyter`, else
//!    `~/.local/share/jupyter` (`~/Library/Jupyter` on macOS); then, as Python's user site is on
//!    outside virtualenvs, `$PYTHONUSERBASE/share/jupyter` (default `~/.local/share/jupyter`);
//! 3. the *environment* dir `<prefix>/share/jupyter`, where `<prefix>` is `$VIRTUAL_ENV`, else the
//!    prefix of `$PARALLAX_PYTHON`, else the prefix of `python3` on `PATH` (a conda env);
//! 4. the *system* dirs `/usr/local/share/jupyter` and `/usr/share/jupyter`.
//!
//! As in jupyter_core 5, the environment dir moves ahead of the user dirs when
//! `JUPYTER_PREFER_ENV_PATH` says so or, when that is unset, when the prefix is a virtualenv (it
//! has a `pyvenv.cfg`) or a non-base conda env: a kernel installed with `--sys-prefix` beats a
//! stale one in `~/.local`.
//!
//! Names are matched case-insensitively and the first directory holding a name wins. If no
//! `python3` spec is installed anywhere, [`find_kernelspec`] returns the spec ipykernel would
//! register, as `KernelSpecManager.ensure_native_kernel` does.
//!
//! The public functions read the process environment; each delegates to an `*_in` function that
//! takes an `Env` snapshot instead, so the rules are tested without touching global state.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The kernel name Jupyter treats as "the Python kernel", with a built-in fallback spec.
pub const NATIVE_KERNEL_NAME: &str = "python3";

/// System-wide data dirs on Unix, lowest priority.
const SYSTEM_DATA_DIRS: [&str; 2] = ["/usr/local/share/jupyter", "/usr/share/jupyter"];

/// Environment variables the search rules read.
const ENV_VARS: [&str; 12] = [
    "HOME",
    "JUPYTER_PATH",
    "JUPYTER_DATA_DIR",
    "JUPYTER_PREFER_ENV_PATH",
    "XDG_DATA_HOME",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "PARALLAX_PYTHON",
    "PYTHONUSERBASE",
    "PYTHONNOUSERSITE",
    "PATH",
];

/// One installed (or built-in) kernelspec.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSpec {
    /// Directory name, lower-cased as Jupyter does.
    pub name: String,
    /// The kernelspec directory (for the built-in python3 spec, a path that need not exist).
    pub resource_dir: PathBuf,
    pub argv: Vec<String>,
    pub display_name: String,
    pub language: String,
    pub interrupt_mode: InterruptMode,
    pub env: BTreeMap<String, String>,
    pub metadata: Map<String, Value>,
}

/// How a kernel wants to be interrupted: SIGINT, or an `interrupt_request` on control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptMode {
    Signal,
    Message,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelSpecError {
    #[error("no kernel named {name:?} (searched: {})", join_paths(searched))]
    NotFound {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("invalid kernelspec {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot read kernelspec {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn join_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing".to_owned();
    }
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// The Jupyter data search path, highest priority first, without duplicates.
pub fn data_dirs() -> Vec<PathBuf> {
    data_dirs_in(&Env::from_process())
}

/// The user's own data dir (where `--user` installs go), if a home or `JUPYTER_DATA_DIR` is known.
pub fn user_data_dir() -> Option<PathBuf> {
    user_data_dir_in(&Env::from_process())
}

/// Finds the kernelspec called `name` (case-insensitively) on the search path.
pub fn find_kernelspec(name: &str) -> Result<KernelSpec, KernelSpecError> {
    let env = Env::from_process();
    find_kernelspec_in(name, &data_dirs_in(&env), &env)
}

/// Every kernelspec on the search path, sorted by name; the first occurrence of each name wins.
/// Specs that fail to load are skipped with a warning, as `jupyter kernelspec list` does.
pub fn list_kernelspecs() -> Vec<KernelSpec> {
    let env = Env::from_process();
    list_kernelspecs_in(&data_dirs_in(&env), &env)
}

/// The Python that runs kernels: `PARALLAX_PYTHON`, else `$VIRTUAL_ENV/bin/python`, else
/// `python3` on `PATH` (not canonicalised: a venv's python is a symlink whose target has lost
/// the venv), else plain `python3`.
pub fn python_interpreter() -> PathBuf {
    python_interpreter_in(&Env::from_process())
}

/// The installation prefix of a Python interpreter: `/p` for `/p/bin/python`, else `None`.
pub fn python_prefix(python: &Path) -> Option<PathBuf> {
    let bin = python.parent()?;
    if bin.file_name() != Some(OsStr::new("bin")) {
        return None;
    }
    bin.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

/// Whether `name` is a valid kernel name: ASCII letters, digits, `.`, `_` and `-`.
pub fn is_valid_kernel_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KernelSpec {
    /// argv with `{connection_file}` and `{resource_dir}` substituted, and a bare python `argv[0]` resolved.
    ///
    /// A bare `python`, `python3` or `python3.N` becomes `<prefix>/bin/<that name>`, else
    /// `<prefix>/bin/python`, when the spec lives under `<prefix>/share/jupyter/kernels/` and that
    /// interpreter exists (the user data dir does not count as a prefix); otherwise
    /// [`python_interpreter`].
    pub fn command(&self, connection_file: &Path) -> Vec<String> {
        self.command_in(connection_file, &Env::from_process())
    }

    fn command_in(&self, connection_file: &Path, env: &Env) -> Vec<String> {
        let connection_file = connection_file.to_string_lossy();
        let resource_dir = self.resource_dir.to_string_lossy();
        let mut argv: Vec<String> = self
            .argv
            .iter()
            .map(|arg| {
                arg.replace("{connection_file}", &connection_file)
                    .replace("{resource_dir}", &resource_dir)
            })
            .collect();
        if let Some(first) = argv.first_mut() {
            if is_bare_python(first) {
                *first = self.python_for(first, env).to_string_lossy().into_owned();
            }
        }
        argv
    }

    /// The interpreter to run for a bare python argv[0].
    fn python_for(&self, argv0: &str, env: &Env) -> PathBuf {
        if let Some(prefix) = spec_prefix(&self.resource_dir) {
            let is_user_dir =
                user_data_dir_in(env).is_some_and(|d| d == prefix.join("share/jupyter"));
            if !is_user_dir {
                let bin = prefix.join("bin");
                for candidate in [bin.join(argv0), bin.join("python")] {
                    if is_executable(&candidate) {
                        return candidate;
                    }
                }
            }
        }
        python_interpreter_in(env)
    }
}

/// `python`, `python3` or `python3.N`: names jupyter_client replaces by its own interpreter.
fn is_bare_python(arg: &str) -> bool {
    match arg.strip_prefix("python3.") {
        Some(minor) => !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()),
        None => arg == "python" || arg == "python3",
    }
}

/// `<prefix>` for a resource dir `<prefix>/share/jupyter/kernels/<name>`.
fn spec_prefix(resource_dir: &Path) -> Option<PathBuf> {
    let kernels = resource_dir.parent()?;
    let jupyter = kernels.parent()?;
    let share = jupyter.parent()?;
    let names_match = kernels.file_name() == Some(OsStr::new("kernels"))
        && jupyter.file_name() == Some(OsStr::new("jupyter"))
        && share.file_name() == Some(OsStr::new("share"));
    if !names_match {
        return None;
    }
    share.parent().map(Path::to_path_buf)
}

/// A snapshot of the environment variables (and system dirs) the search rules depend on.
#[derive(Clone, Debug)]
struct Env {
    vars: BTreeMap<&'static str, OsString>,
    system_dirs: Vec<PathBuf>,
}

impl Env {
    fn from_process() -> Self {
        let mut vars = BTreeMap::new();
        for name in ENV_VARS {
            if let Some(value) = std::env::var_os(name) {
                vars.insert(name, value);
            }
        }
        // jupyter_core resolves symlinks in the home dir (e.g. /home -> /usr/home on FreeBSD).
        if let Some(home) = vars.get("HOME") {
            if let Ok(real) = fs::canonicalize(home) {
                vars.insert("HOME", real.into_os_string());
            }
        }
        Env {
            vars,
            system_dirs: SYSTEM_DATA_DIRS.iter().map(PathBuf::from).collect(),
        }
    }

    /// The variable's value if it is set at all (even to the empty string).
    fn raw(&self, name: &str) -> Option<&OsStr> {
        self.vars.get(name).map(OsString::as_os_str)
    }

    /// The variable's value if it is set and non-empty, which is how jupyter_core tests most of them.
    fn var(&self, name: &str) -> Option<&OsStr> {
        self.raw(name).filter(|v| !v.is_empty())
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        self.var(name).map(PathBuf::from)
    }
}

fn user_data_dir_in(env: &Env) -> Option<PathBuf> {
    if let Some(dir) = env.path("JUPYTER_DATA_DIR") {
        return Some(dir);
    }
    let home = env.path("HOME");
    if cfg!(target_os = "macos") {
        return home.map(|h| h.join("Library/Jupyter"));
    }
    let xdg = env
        .path("XDG_DATA_HOME")
        .or_else(|| home.map(|h| h.join(".local/share")))?;
    Some(xdg.join("jupyter"))
}

/// `<userbase>/share/jupyter`, searched when Python's user site is enabled (not in a venv).
fn user_site_data_dir(env: &Env, prefix: Option<&Path>) -> Option<PathBuf> {
    if env.var("PYTHONNOUSERSITE").is_some() || prefix.is_some_and(is_venv) {
        return None;
    }
    let base = match env.path("PYTHONUSERBASE") {
        Some(base) => base,
        // On macOS framework builds the user base depends on the Python version: leave it out.
        None if cfg!(target_os = "macos") => return None,
        None => env.path("HOME")?.join(".local"),
    };
    Some(base.join("share/jupyter"))
}

/// The prefix whose `share/jupyter` is the environment-level data dir.
fn env_prefix(env: &Env) -> Option<PathBuf> {
    env.path("VIRTUAL_ENV")
        .or_else(|| env.path("PARALLAX_PYTHON").and_then(|p| python_prefix(&p)))
        .or_else(|| python_on_path(env).and_then(|p| python_prefix(&p)))
}

fn is_venv(prefix: &Path) -> bool {
    prefix.join("pyvenv.cfg").is_file()
}

/// jupyter_core's `prefer_environment_over_user` (without its ownership check of the prefix).
fn prefer_env_over_user(env: &Env, prefix: Option<&Path>) -> bool {
    if let Some(flag) = env.raw("JUPYTER_PREFER_ENV_PATH") {
        let flag = flag.to_string_lossy().to_ascii_lowercase();
        return !matches!(flag.as_str(), "no" | "n" | "false" | "off" | "0" | "0.0");
    }
    let Some(prefix) = prefix else {
        return false;
    };
    if is_venv(prefix) {
        return true;
    }
    let conda_env = env
        .raw("CONDA_DEFAULT_ENV")
        .is_some_and(|name| name != "base");
    let in_conda_prefix = env
        .path("CONDA_PREFIX")
        .is_some_and(|conda| prefix.starts_with(conda));
    conda_env && in_conda_prefix
}

fn data_dirs_in(env: &Env) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env
        .var("JUPYTER_PATH")
        .map(|v| {
            std::env::split_paths(v)
                .filter(|p| !p.as_os_str().is_empty())
                // Rebuilding from components drops a trailing `/`, as jupyter_core's rstrip does.
                .map(|p| p.components().collect())
                .collect()
        })
        .unwrap_or_default();

    let prefix = env_prefix(env);
    let user = [
        user_data_dir_in(env),
        user_site_data_dir(env, prefix.as_deref()),
    ];
    let env_dir = prefix
        .as_ref()
        .map(|p| p.join("share/jupyter"))
        .filter(|d| !env.system_dirs.contains(d));
    if prefer_env_over_user(env, prefix.as_deref()) {
        dirs.extend(env_dir);
        dirs.extend(user.into_iter().flatten());
    } else {
        dirs.extend(user.into_iter().flatten());
        dirs.extend(env_dir);
    }
    dirs.extend(env.system_dirs.iter().cloned());

    let mut seen = HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

fn python_on_path(env: &Env) -> Option<PathBuf> {
    let path = env.var("PATH")?;
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("python3"))
        .find(|candidate| is_executable(candidate))
}

fn python_interpreter_in(env: &Env) -> PathBuf {
    if let Some(python) = env.path("PARALLAX_PYTHON") {
        return python;
    }
    if let Some(venv) = env.path("VIRTUAL_ENV") {
        let python = venv.join("bin/python");
        if is_executable(&python) {
            return python;
        }
    }
    python_on_path(env).unwrap_or_else(|| PathBuf::from("python3"))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

fn is_kernel_dir(path: &Path) -> bool {
    path.is_dir() && path.join("kernel.json").is_file()
}

/// The kernelspec dirs under `<data_dir>/kernels`, as (lower-cased name, path), sorted by path so
/// that the winner among names differing only in case does not depend on directory order.
fn kernels_in(data_dir: &Path) -> Vec<(String, PathBuf)> {
    let kernels = data_dir.join("kernels");
    let entries = match fs::read_dir(&kernels) {
        Ok(entries) => entries,
        Err(err) => {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(dir = %kernels.display(), %err, "skipping unreadable kernels dir");
            }
            return Vec::new();
        }
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|entry| is_kernel_dir(&entry.path()))
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().to_lowercase();
            (name, entry.path())
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

fn find_kernelspec_in(
    name: &str,
    dirs: &[PathBuf],
    env: &Env,
) -> Result<KernelSpec, KernelSpecError> {
    let wanted = name.to_lowercase();
    for dir in dirs {
        if let Some((found, path)) = kernels_in(dir).into_iter().find(|(n, _)| *n == wanted) {
            return load_kernelspec(&found, &path);
        }
    }
    if wanted == NATIVE_KERNEL_NAME {
        return Ok(native_kernelspec(env));
    }
    Err(KernelSpecError::NotFound {
        name: name.to_owned(),
        searched: dirs.iter().map(|d| d.join("kernels")).collect(),
    })
}

fn list_kernelspecs_in(dirs: &[PathBuf], env: &Env) -> Vec<KernelSpec> {
    let mut first: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        for (name, path) in kernels_in(dir) {
            first.entry(name).or_insert(path);
        }
    }
    let mut specs: Vec<KernelSpec> = first
        .iter()
        .filter_map(|(name, path)| match load_kernelspec(name, path) {
            Ok(spec) => Some(spec),
            Err(err) => {
                tracing::warn!(%err, "skipping kernelspec");
                None
            }
        })
        .collect();
    if !first.contains_key(NATIVE_KERNEL_NAME) {
        specs.push(native_kernelspec(env));
        specs.sort_by(|a, b| a.name.cmp(&b.name));
    }
    specs
}

/// The spec ipykernel registers for itself, used when no `python3` spec is installed.
fn native_kernelspec(env: &Env) -> KernelSpec {
    let python = python_interpreter_in(env);
    let resource_dir = python_prefix(&python)
        .map(|prefix| prefix.join("share/jupyter"))
        .or_else(|| user_data_dir_in(env))
        .unwrap_or_default()
        .join("kernels")
        .join(NATIVE_KERNEL_NAME);
    KernelSpec {
        name: NATIVE_KERNEL_NAME.to_owned(),
        resource_dir,
        argv: vec![
            python.to_string_lossy().into_owned(),
            "-m".to_owned(),
            "ipykernel_launcher".to_owned(),
            "-f".to_owned(),
            "{connection_file}".to_owned(),
        ],
        display_name: "Python 3 (ipykernel)".to_owned(),
        language: "python".to_owned(),
        interrupt_mode: InterruptMode::Signal,
        env: BTreeMap::new(),
        metadata: Map::new(),
    }
}

fn load_kernelspec(name: &str, resource_dir: &Path) -> Result<KernelSpec, KernelSpecError> {
    let path = resource_dir.join("kernel.json");
    let bytes = fs::read(&path).map_err(|source| KernelSpecError::Io {
        path: path.clone(),
        source,
    })?;
    parse_kernel_json(name, resource_dir, &bytes)
        .map_err(|reason| KernelSpecError::Invalid { path, reason })
}

/// Parses a kernel.json; the error is the reason, for [`KernelSpecError::Invalid`].
fn parse_kernel_json(name: &str, resource_dir: &Path, bytes: &[u8]) -> Result<KernelSpec, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut obj) = value else {
        return Err(format!("expected a JSON object, found {}", kind(&value)));
    };

    let argv = match obj.remove("argv") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                other => Err(format!(
                    "`argv` must hold only strings, found {}",
                    kind(&other)
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => return Err("`argv` is empty".to_owned()),
        Some(other) => {
            return Err(format!(
                "`argv` must be a list of strings, found {}",
                kind(&other)
            ))
        }
        None => return Err("`argv` is missing".to_owned()),
    };
    let display_name = match take_string(&mut obj, "display_name")? {
        Some(s) => s,
        None => return Err("`display_name` is missing".to_owned()),
    };
    let language = take_string(&mut obj, "language")?.unwrap_or_default();
    let interrupt_mode = match take_string(&mut obj, "interrupt_mode")? {
        None => InterruptMode::Signal,
        Some(mode) if mode.eq_ignore_ascii_case("signal") => InterruptMode::Signal,
        Some(mode) if mode.eq_ignore_ascii_case("message") => InterruptMode::Message,
        Some(mode) => {
            return Err(format!(
                "`interrupt_mode` must be \"signal\" or \"message\", found {mode:?}"
            ))
        }
    };
    let env = match take_object(&mut obj, "env")? {
        None => BTreeMap::new(),
        Some(vars) => vars
            .into_iter()
            .map(|(key, value)| match value {
                Value::String(s) => Ok((key, s)),
                other => Err(format!(
                    "`env.{key}` must be a string, found {}",
                    kind(&other)
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let metadata = take_object(&mut obj, "metadata")?.unwrap_or_default();

    Ok(KernelSpec {
        name: name.to_owned(),
        resource_dir: resource_dir.to_path_buf(),
        argv,
        display_name,
        language,
        interrupt_mode,
        env,
        metadata,
    })
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.remove(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("`{key}` must be a string, found {}", kind(&other))),
    }
}

fn take_object(
    obj: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<Map<String, Value>>, String> {
    match obj.remove(key) {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(format!("`{key}` must be an object, found {}", kind(&other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn tmp() -> TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    /// An environment with exactly these variables and no system dirs (unless a test adds some).
    fn env(vars: &[(&'static str, &Path)]) -> Env {
        Env {
            vars: vars
                .iter()
                .map(|(k, v)| (*k, v.as_os_str().to_owned()))
                .collect(),
            system_dirs: Vec::new(),
        }
    }

    fn write_file(path: &Path, contents: &str) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, contents).expect("write");
    }

    fn write_exe(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        write_file(path, "#!/bin/sh\n");
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn write_spec(data_dir: &Path, name: &str, argv0: &str, display: &str) -> PathBuf {
        let dir = data_dir.join("kernels").join(name);
        let json = serde_json::json!({
            "argv": [argv0, "-f", "{connection_file}"],
            "display_name": display,
            "language": "python",
        });
        write_file(&dir.join("kernel.json"), &json.to_string());
        dir
    }

    #[test]
    fn data_dirs_follow_jupyter_order() {
        let t = tmp();
        let p = |s: &str| t.path().join(s);
        let venv = p("venv");
        write_file(&venv.join("pyvenv.cfg"), "home = /usr/bin\n");
        let jp = std::env::join_paths([p("a"), PathBuf::new(), p("b/")]).expect("join");
        let jp = PathBuf::from(jp);
        let (home, xdg, data) = (p("home"), p("xdg"), p("data"));
        let plain_python = p("plain/bin/python3");
        let venv_python = p("venv/bin/python");
        let no = PathBuf::from("0");

        let cases: Vec<(&str, Env, Vec<PathBuf>)> = vec![
            (
                "home only: user dir, user site collapses into it",
                env(&[("HOME", &home)]),
                vec![p("home/.local/share/jupyter")],
            ),
            (
                "JUPYTER_PATH first, empty entries skipped, trailing slash deduplicated",
                env(&[("HOME", &home), ("JUPYTER_PATH", &jp)]),
                vec![p("a"), p("b"), p("home/.local/share/jupyter")],
            ),
            (
                "XDG_DATA_HOME moves the user dir but not the user site",
                env(&[("HOME", &home), ("XDG_DATA_HOME", &xdg)]),
                vec![p("xdg/jupyter"), p("home/.local/share/jupyter")],
            ),
            (
                "JUPYTER_DATA_DIR beats XDG",
                env(&[
                    ("HOME", &home),
                    ("XDG_DATA_HOME", &xdg),
                    ("JUPYTER_DATA_DIR", &data),
                ]),
                vec![p("data"), p("home/.local/share/jupyter")],
            ),
            (
                "plain prefix from PARALLAX_PYTHON comes after the user dir",
                env(&[("HOME", &home), ("PARALLAX_PYTHON", &plain_python)]),
                vec![p("home/.local/share/jupyter"), p("plain/share/jupyter")],
            ),
            (
                "a virtualenv prefix is preferred and disables the user site",
                env(&[
                    ("HOME", &home),
                    ("XDG_DATA_HOME", &xdg),
                    ("VIRTUAL_ENV", &venv),
                ]),
                vec![p("venv/share/jupyter"), p("xdg/jupyter")],
            ),
            (
                "PARALLAX_PYTHON inside a venv counts as a venv",
                env(&[("HOME", &home), ("PARALLAX_PYTHON", &venv_python)]),
                vec![p("venv/share/jupyter"), p("home/.local/share/jupyter")],
            ),
            (
                "VIRTUAL_ENV beats PARALLAX_PYTHON for the prefix",
                env(&[
                    ("HOME", &home),
                    ("VIRTUAL_ENV", &venv),
                    ("PARALLAX_PYTHON", &plain_python),
                ]),
                vec![p("venv/share/jupyter"), p("home/.local/share/jupyter")],
            ),
            (
                "JUPYTER_PREFER_ENV_PATH=0 puts the user dir back first",
                env(&[
                    ("HOME", &home),
                    ("VIRTUAL_ENV", &venv),
                    ("JUPYTER_PREFER_ENV_PATH", &no),
                ]),
                vec![p("home/.local/share/jupyter"), p("venv/share/jupyter")],
            ),
            (
                "python3 on PATH gives the prefix when nothing else does",
                env(&[("HOME", &home), ("PATH", &p("plain/bin"))]),
                vec![p("home/.local/share/jupyter"), p("plain/share/jupyter")],
            ),
        ];
        write_exe(&plain_python);
        for (what, env, want) in cases {
            assert_eq!(data_dirs_in(&env), want, "{what}");
        }
    }

    #[test]
    fn jupyter_path_entries_lose_their_trailing_slash() {
        let e = env(&[("JUPYTER_PATH", Path::new("/a/b/"))]);
        assert_eq!(data_dirs_in(&e)[0].as_os_str(), "/a/b");
    }

    #[test]
    fn system_dirs_come_last_and_absorb_the_env_dir() {
        let t = tmp();
        let mut e = env(&[
            ("HOME", t.path()),
            ("PARALLAX_PYTHON", Path::new("/usr/bin/python3")),
        ]);
        e.system_dirs = SYSTEM_DATA_DIRS.iter().map(PathBuf::from).collect();
        let want = vec![
            t.path().join(".local/share/jupyter"),
            PathBuf::from("/usr/local/share/jupyter"),
            PathBuf::from("/usr/share/jupyter"),
        ];
        assert_eq!(data_dirs_in(&e), want);
    }

    #[test]
    fn python_interpreter_rules() {
        let t = tmp();
        let venv = t.path().join("venv");
        let bin = t.path().join("bin");
        write_exe(&venv.join("bin/python"));
        write_exe(&bin.join("python3"));
        let explicit = Path::new("/opt/py/bin/python3.12");
        let missing = t.path().join("nothing");
        let cases: Vec<(&str, Env, PathBuf)> = vec![
            (
                "PARALLAX_PYTHON wins",
                env(&[("PARALLAX_PYTHON", explicit), ("VIRTUAL_ENV", &venv)]),
                explicit.to_path_buf(),
            ),
            (
                "then the venv's python",
                env(&[("VIRTUAL_ENV", &venv), ("PATH", &bin)]),
                venv.join("bin/python"),
            ),
            (
                "a venv without python is skipped",
                env(&[("VIRTUAL_ENV", &missing), ("PATH", &bin)]),
                bin.join("python3"),
            ),
            (
                "then python3 on PATH",
                env(&[("PATH", &bin)]),
                bin.join("python3"),
            ),
            (
                "else bare python3",
                env(&[("PATH", &missing)]),
                PathBuf::from("python3"),
            ),
        ];
        for (what, env, want) in cases {
            assert_eq!(python_interpreter_in(&env), want, "{what}");
        }
    }

    #[test]
    fn python_on_path_keeps_symlinks() {
        let t = tmp();
        let real = t.path().join("real/python3.12");
        write_exe(&real);
        let bin = t.path().join("venv/bin");
        fs::create_dir_all(&bin).expect("mkdir");
        std::os::unix::fs::symlink(&real, bin.join("python3")).expect("symlink");
        assert_eq!(
            python_interpreter_in(&env(&[("PATH", &bin)])),
            bin.join("python3")
        );
    }

    #[test]
    fn find_is_case_insensitive_and_first_dir_wins() {
        let t = tmp();
        let (first, second) = (t.path().join("first"), t.path().join("second"));
        let dir = write_spec(&first, "MyKernel", "/bin/a", "From first");
        write_spec(&second, "mykernel", "/bin/b", "From second");
        let dirs = vec![first, second];
        let spec = find_kernelspec_in("MYKERNEL", &dirs, &env(&[])).expect("found");
        assert_eq!(spec.name, "mykernel");
        assert_eq!(spec.display_name, "From first");
        assert_eq!(spec.resource_dir, dir);
        assert_eq!(spec.interrupt_mode, InterruptMode::Signal);
    }

    #[test]
    fn not_found_lists_what_was_searched() {
        let t = tmp();
        let dirs = vec![t.path().join("a"), t.path().join("b")];
        let err = find_kernelspec_in("nope", &dirs, &env(&[])).expect_err("missing");
        let msg = err.to_string();
        let want = format!(
            "no kernel named \"nope\" (searched: {}, {})",
            t.path().join("a/kernels").display(),
            t.path().join("b/kernels").display()
        );
        assert_eq!(msg, want);
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn python3_falls_back_to_the_native_spec() {
        let t = tmp();
        let python = t.path().join("env/bin/python3");
        let spec = find_kernelspec_in(
            "python3",
            &[t.path().join("none")],
            &env(&[("PARALLAX_PYTHON", &python)]),
        )
        .expect("native");
        let python = python.to_string_lossy().into_owned();
        assert_eq!(
            spec.argv,
            [
                python.as_str(),
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}"
            ]
        );
        assert_eq!(spec.display_name, "Python 3 (ipykernel)");
        assert_eq!(spec.language, "python");
        assert_eq!(
            spec.resource_dir,
            t.path().join("env/share/jupyter/kernels/python3")
        );
    }

    #[test]
    fn installed_python3_beats_the_native_spec() {
        let t = tmp();
        write_spec(t.path(), "python3", "python3", "Installed");
        let spec =
            find_kernelspec_in("python3", &[t.path().to_path_buf()], &env(&[])).expect("found");
        assert_eq!(spec.display_name, "Installed");
    }

    #[test]
    fn list_takes_first_occurrence_skips_invalid_and_adds_python3() {
        let t = tmp();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_spec(&a, "one", "/bin/one", "One (a)");
        write_spec(&b, "one", "/bin/one", "One (b)");
        write_spec(&b, "two", "/bin/two", "Two");
        write_file(&a.join("kernels/broken/kernel.json"), "{not json");
        fs::create_dir_all(a.join("kernels/not-a-kernel")).expect("mkdir");
        let specs = list_kernelspecs_in(&[a, b], &env(&[]));
        let got: Vec<(&str, &str)> = specs
            .iter()
            .map(|s| (s.name.as_str(), s.display_name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("one", "One (a)"),
                ("python3", "Python 3 (ipykernel)"),
                ("two", "Two")
            ]
        );
    }

    #[test]
    fn parse_kernel_json_table() {
        let ok: &[(&str, &str)] = &[
            (r#"{"argv": ["k"], "display_name": "K"}"#, "minimal"),
            (
                r#"{"argv": ["k"], "display_name": "K", "interrupt_mode": "Message"}"#,
                "mode is caseless",
            ),
            (
                r#"{"argv": ["k"], "display_name": "K", "kernel_protocol_version": "5.3", "x": 1}"#,
                "unknown keys ignored",
            ),
        ];
        for (json, what) in ok {
            assert!(
                parse_kernel_json("k", Path::new("/k"), json.as_bytes()).is_ok(),
                "{what}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("{", "not valid JSON"),
            ("[1]", "expected a JSON object, found a list"),
            (r#"{"display_name": "K"}"#, "`argv` is missing"),
            (r#"{"argv": [], "display_name": "K"}"#, "`argv` is empty"),
            (
                r#"{"argv": "k", "display_name": "K"}"#,
                "`argv` must be a list of strings, found a string",
            ),
            (
                r#"{"argv": ["k", 3], "display_name": "K"}"#,
                "`argv` must hold only strings, found a number",
            ),
            (r#"{"argv": ["k"]}"#, "`display_name` is missing"),
            (
                r#"{"argv": ["k"], "display_name": null}"#,
                "`display_name` must be a string, found null",
            ),
            (
                r#"{"argv": ["k"], "display_name": "K", "interrupt_mode": "poke"}"#,
                "`interrupt_mode` must be",
            ),
            (
                r#"{"argv": ["k"], "display_name": "K", "env": {"A": 1}}"#,
                "`env.A` must be a string",
            ),
            (
                r#"{"argv": ["k"], "display_name": "K", "metadata": []}"#,
                "`metadata` must be an object",
            ),
        ];
        for (json, want) in bad {
            let err = parse_kernel_json("k", Path::new("/k"), json.as_bytes()).expect_err(json);
            assert!(err.starts_with(want), "{json}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn parse_reads_every_field() {
        let json = r#"{"argv": ["k", "-f", "{connection_file}"], "display_name": "K", "language": "rust",
            "interrupt_mode": "message", "env": {"A": "1"}, "metadata": {"debugger": true}}"#;
        let spec = parse_kernel_json("k", Path::new("/r"), json.as_bytes()).expect("valid");
        assert_eq!(spec.language, "rust");
        assert_eq!(spec.interrupt_mode, InterruptMode::Message);
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(spec.metadata.get("debugger"), Some(&Value::Bool(true)));
    }

    #[test]
    fn load_reports_the_file_in_errors() {
        let t = tmp();
        write_file(&t.path().join("k/kernel.json"), r#"{"argv": []}"#);
        let err = load_kernelspec("k", &t.path().join("k")).expect_err("invalid");
        assert!(
            matches!(&err, KernelSpecError::Invalid { path, .. } if *path == t.path().join("k/kernel.json"))
        );
        let err = load_kernelspec("k", &t.path().join("missing")).expect_err("io");
        assert!(matches!(err, KernelSpecError::Io { .. }));
    }

    #[test]
    fn bare_python_names() {
        for (arg, want) in [
            ("python", true),
            ("python3", true),
            ("python3.12", true),
            ("python3.", false),
            ("python3.x", false),
            ("python2", false),
            ("/usr/bin/python3", false),
            ("ipython", false),
        ] {
            assert_eq!(is_bare_python(arg), want, "{arg}");
        }
    }

    fn spec_at(resource_dir: &Path, argv: &[&str]) -> KernelSpec {
        KernelSpec {
            name: "k".to_owned(),
            resource_dir: resource_dir.to_path_buf(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            display_name: "K".to_owned(),
            language: "python".to_owned(),
            interrupt_mode: InterruptMode::Signal,
            env: BTreeMap::new(),
            metadata: Map::new(),
        }
    }

    #[test]
    fn command_substitutes_and_resolves_python() {
        let t = tmp();
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let prefix = t.path().join("venv");
        write_exe(&prefix.join("bin/python"));
        let in_prefix = prefix.join("share/jupyter/kernels/k");
        let elsewhere = t.path().join("specs/k");
        let home = t.path().join("home");
        write_exe(&home.join(".local/bin/python3"));
        let in_user_dir = home.join(".local/share/jupyter/kernels/k");
        let fallback = Path::new("/fallback/python3");
        let e = env(&[("PARALLAX_PYTHON", fallback), ("HOME", &home)]);
        let cf = Path::new("/run/kernel-1.json");

        let cases: Vec<(&str, &Path, Vec<&str>, Vec<String>)> = vec![
            (
                "placeholders anywhere in an arg",
                &elsewhere,
                vec!["/bin/k", "--f={connection_file}", "{resource_dir}/logo.png"],
                vec![
                    "/bin/k".into(),
                    "--f=/run/kernel-1.json".into(),
                    format!("{}/logo.png", s(&elsewhere)),
                ],
            ),
            (
                "python under a prefix uses the prefix's python",
                &in_prefix,
                vec!["python3", "-m", "x"],
                vec![s(&prefix.join("bin/python")), "-m".into(), "x".into()],
            ),
            (
                "python outside a prefix uses python_interpreter",
                &elsewhere,
                vec!["python3.11"],
                vec![s(fallback)],
            ),
            (
                "the user data dir is not a prefix",
                &in_user_dir,
                vec!["python3"],
                vec![s(fallback)],
            ),
            (
                "absolute argv[0] is kept",
                &in_prefix,
                vec!["/usr/bin/python3"],
                vec!["/usr/bin/python3".into()],
            ),
        ];
        for (what, dir, argv, want) in cases {
            assert_eq!(spec_at(dir, &argv).command_in(cf, &e), want, "{what}");
        }
    }

    #[test]
    fn prefix_and_names() {
        assert_eq!(
            python_prefix(Path::new("/opt/venv/bin/python")),
            Some(PathBuf::from("/opt/venv"))
        );
        assert_eq!(python_prefix(Path::new("/opt/python3")), None);
        assert_eq!(python_prefix(Path::new("python3")), None);
        assert_eq!(python_prefix(Path::new("bin/python3")), None);
        for (name, want) in [
            ("parallax", true),
            ("Py-3.12_x", true),
            ("", false),
            ("a b", false),
            ("a/b", false),
            ("é", false),
        ] {
            assert_eq!(is_valid_kernel_name(name), want, "{name:?}");
        }
    }
}
