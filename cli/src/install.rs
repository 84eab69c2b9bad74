//! `parallax kernel install` and `parallax kernel uninstall`: registering parallax as a Jupyter
//! kernel.
//!
//! Installing writes a kernelspec directory `<data_dir>/kernels/<name>/` holding `kernel.json`
//! and the two logos, where `<data_dir>` is the user's Jupyter data dir (`--user`), the Python
//! environment's `<prefix>/share/jupyter` (`--sys-prefix`), or `DIR/share/jupyter`
//! (`--prefix DIR`), as `jupyter kernelspec install` does. The repo's `kernelspec/kernel.json.in`
//! shows the shape of the file for humans; the code builds it with `json!` so that no optional
//! field is ever written as `null` (which jupyter_client rejects). The logos are compiled into the
//! binary, so an installed `parallax` needs no checkout.
//!
//! Uninstalling removes every kernelspec of that name on the Jupyter search path whose `argv[0]`
//! is a parallax binary, and leaves other kernels of the same name alone.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use parallax_engines::kernelspec::{self, is_valid_kernel_name, python_interpreter, python_prefix};
use serde_json::{json, Value};

const LOGO_32: &[u8] = include_bytes!("../../kernelspec/logo-32x32.png");
const LOGO_64: &[u8] = include_bytes!("../../kernelspec/logo-64x64.png");

/// Where to install the kernelspec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallLocation {
    /// The user's Jupyter data dir (`~/.local/share/jupyter` by default).
    User,
    /// The Python environment's `<prefix>/share/jupyter`.
    SysPrefix,
    /// `DIR/share/jupyter`.
    Prefix(PathBuf),
}

#[derive(Clone, Debug)]
pub struct InstallOptions {
    pub location: InstallLocation,
    /// Kernel name; lower-cased, as Jupyter does.
    pub name: String,
    pub display_name: String,
    /// Recorded as `PARALLAX_PYTHON` in the spec's env; defaults to [`python_interpreter`].
    pub python: Option<PathBuf>,
    /// If set, the kernel runs `--local-kernel NAME`.
    pub local_kernel: Option<String>,
    /// If set, the kernel runs `--profile NAME`.
    pub profile: Option<String>,
}

/// Installs the parallax kernelspec and returns its directory. An existing kernelspec of the
/// same name at that location is replaced.
pub fn install(opts: &InstallOptions, parallax_exe: &Path) -> Result<PathBuf> {
    let name = kernel_name(&opts.name)?;
    let python = match &opts.python {
        Some(python) => absolute(python)?,
        None => python_interpreter(),
    };
    if !python.is_absolute() {
        tracing::warn!(
            python = %python.display(),
            "no Python interpreter found; the kernel will look for it on PATH when it starts"
        );
    }
    let data_dir = match &opts.location {
        InstallLocation::User => kernelspec::user_data_dir()
            .context("cannot find the user's Jupyter data dir: set HOME or JUPYTER_DATA_DIR")?,
        InstallLocation::SysPrefix => {
            let virtual_env = std::env::var_os("VIRTUAL_ENV")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
            sys_prefix(opts.python.is_some(), &python, virtual_env)?.join("share/jupyter")
        }
        InstallLocation::Prefix(dir) => absolute(dir)?.join("share/jupyter"),
    };
    let dest = data_dir.join("kernels").join(&name);
    let spec = kernel_json(opts, &absolute(parallax_exe)?, &python)?;
    write_kernelspec(&dest, &spec)?;

    // Jupyter run from the chosen Python's environment searches that environment's prefix too.
    let env_dir = kernelspec::python_prefix(&python).map(|prefix| prefix.join("share/jupyter"));
    if !kernelspec::data_dirs().contains(&data_dir) && env_dir.as_ref() != Some(&data_dir) {
        tracing::warn!(
            dir = %data_dir.display(),
            "installed outside the Jupyter search path: add this dir to JUPYTER_PATH"
        );
    }
    tracing::info!(dest = %dest.display(), "installed kernelspec {name}");
    Ok(dest)
}

/// Removes every parallax kernelspec called `name` on the Jupyter search path; returns the
/// directories removed.
pub fn uninstall(name: &str) -> Result<Vec<PathBuf>> {
    uninstall_from(name, &kernelspec::data_dirs())
}

fn uninstall_from(name: &str, data_dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let wanted = name.to_lowercase();
    let mut removed = Vec::new();
    let mut others = Vec::new();
    for data_dir in data_dirs {
        let Ok(entries) = fs::read_dir(data_dir.join("kernels")) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().to_lowercase() != wanted {
                continue;
            }
            let dir = entry.path();
            if !is_parallax_kernelspec(&dir) {
                others.push(dir);
                continue;
            }
            remove_kernelspec(&dir)?;
            removed.push(dir);
        }
    }
    if removed.is_empty() {
        let others: Vec<String> = others.iter().map(|d| d.display().to_string()).collect();
        if others.is_empty() {
            bail!("no parallax kernelspec named {name} is installed");
        }
        bail!(
            "no parallax kernelspec named {name} is installed (left alone, not parallax: {})",
            others.join(", ")
        );
    }
    Ok(removed)
}

/// Whether `dir/kernel.json` starts a parallax binary.
fn is_parallax_kernelspec(dir: &Path) -> bool {
    let Ok(bytes) = fs::read(dir.join("kernel.json")) else {
        return false;
    };
    let Ok(spec) = serde_json::from_slice::<Value>(&bytes) else {
        return false;
    };
    spec.get("argv")
        .and_then(|argv| argv.get(0))
        .and_then(Value::as_str)
        .and_then(|argv0| Path::new(argv0).file_name())
        .is_some_and(|exe| exe.to_string_lossy().ends_with("parallax"))
}

fn remove_kernelspec(dir: &Path) -> Result<()> {
    let is_link = fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
    let result = if is_link {
        fs::remove_file(dir)
    } else {
        fs::remove_dir_all(dir)
    };
    result.with_context(|| format!("cannot remove kernelspec {}", dir.display()))
}

/// Lower-cases and validates a kernel name as jupyter_client does.
fn kernel_name(name: &str) -> Result<String> {
    let name = name.to_lowercase();
    if !is_valid_kernel_name(&name) {
        bail!(
            "invalid kernel name {name:?}: use only ASCII letters, digits, and - . _ \
             (hyphen, period, underscore)"
        );
    }
    Ok(name)
}

/// The prefix for `--sys-prefix`: that of an explicit `--python`, else the active virtualenv,
/// else that of the default interpreter.
fn sys_prefix(
    explicit_python: bool,
    python: &Path,
    virtual_env: Option<PathBuf>,
) -> Result<PathBuf> {
    let prefix = if explicit_python {
        python_prefix(python)
    } else {
        virtual_env.or_else(|| python_prefix(python))
    };
    prefix.with_context(|| {
        format!(
            "--sys-prefix needs a Python environment, but {} is not in a <prefix>/bin dir: \
             activate a virtualenv or pass --python /path/to/env/bin/python",
            python.display()
        )
    })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

fn utf8<'a>(path: &'a Path, what: &str) -> Result<&'a str> {
    path.to_str()
        .with_context(|| format!("{what} path {} is not valid UTF-8", path.display()))
}

/// The kernel.json contents (see `kernelspec/kernel.json.in`).
fn kernel_json(opts: &InstallOptions, parallax_exe: &Path, python: &Path) -> Result<Value> {
    let mut argv = vec![
        utf8(parallax_exe, "parallax executable")?.to_owned(),
        "kernel".to_owned(),
        "-f".to_owned(),
        "{connection_file}".to_owned(),
    ];
    if let Some(local_kernel) = &opts.local_kernel {
        argv.extend(["--local-kernel".to_owned(), local_kernel.clone()]);
    }
    if let Some(profile) = &opts.profile {
        argv.extend(["--profile".to_owned(), profile.clone()]);
    }
    Ok(json!({
        "argv": argv,
        "display_name": opts.display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "env": { "PARALLAX_PYTHON": utf8(python, "python")? },
        "metadata": {
            "debugger": false,
            "parallax": { "version": env!("CARGO_PKG_VERSION") },
        },
    }))
}

fn write_kernelspec(dest: &Path, spec: &Value) -> Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        tracing::info!(dest = %dest.display(), "replacing existing kernelspec");
        remove_kernelspec(dest)?;
    }
    fs::create_dir_all(dest)
        .with_context(|| format!("cannot create kernelspec dir {}", dest.display()))?;
    let mut text = serde_json::to_string_pretty(spec).context("cannot serialise kernel.json")?;
    text.push('\n');
    for (file, bytes) in [
        ("kernel.json", text.as_bytes()),
        ("logo-32x32.png", LOGO_32),
        ("logo-64x64.png", LOGO_64),
    ] {
        let path = dest.join(file);
        fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(location: InstallLocation, python: &Path) -> InstallOptions {
        InstallOptions {
            location,
            name: "parallax".to_owned(),
            display_name: "Python 3 (parallax)".to_owned(),
            python: Some(python.to_path_buf()),
            local_kernel: None,
            profile: None,
        }
    }

    fn read_json(path: &Path) -> Value {
        let bytes = fs::read(path).expect("read kernel.json");
        serde_json::from_slice(&bytes).expect("kernel.json is JSON")
    }

    fn has_null(value: &Value) -> bool {
        match value {
            Value::Null => true,
            Value::Array(items) => items.iter().any(has_null),
            Value::Object(map) => map.values().any(has_null),
            _ => false,
        }
    }

    #[test]
    fn install_into_prefix_writes_spec_and_logos() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut opts = options(
            InstallLocation::Prefix(tmp.path().to_path_buf()),
            Path::new("/opt/env/bin/python3"),
        );
        opts.local_kernel = Some("python3".to_owned());
        opts.profile = Some("lab".to_owned());
        let dest = install(&opts, Path::new("/opt/parallax/bin/parallax")).expect("install");
        assert_eq!(dest, tmp.path().join("share/jupyter/kernels/parallax"));

        let spec = read_json(&dest.join("kernel.json"));
        let want = json!({
            "argv": ["/opt/parallax/bin/parallax", "kernel", "-f", "{connection_file}",
                     "--local-kernel", "python3", "--profile", "lab"],
            "display_name": "Python 3 (parallax)",
            "language": "python",
            "interrupt_mode": "signal",
            "env": {"PARALLAX_PYTHON": "/opt/env/bin/python3"},
            "metadata": {"debugger": false, "parallax": {"version": env!("CARGO_PKG_VERSION")}},
        });
        assert_eq!(spec, want);
        assert!(!has_null(&spec));
        assert_eq!(
            fs::read(dest.join("logo-32x32.png")).expect("logo"),
            LOGO_32
        );
        assert_eq!(
            fs::read(dest.join("logo-64x64.png")).expect("logo"),
            LOGO_64
        );
        assert!(LOGO_32.starts_with(b"\x89PNG") && LOGO_64.starts_with(b"\x89PNG"));
    }

    #[test]
    fn template_matches_what_install_writes() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let opts = options(
            InstallLocation::Prefix(tmp.path().to_path_buf()),
            Path::new("/env/bin/python"),
        );
        let dest = install(&opts, Path::new("/bin/parallax")).expect("install");
        let template = include_str!("../../kernelspec/kernel.json.in")
            .replace("@PARALLAX_EXE@", "/bin/parallax")
            .replace("@DISPLAY_NAME@", "Python 3 (parallax)")
            .replace("@PYTHON@", "/env/bin/python")
            .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
        let template: Value = serde_json::from_str(&template).expect("template is JSON");
        assert_eq!(read_json(&dest.join("kernel.json")), template);
    }

    #[test]
    fn relative_paths_become_absolute() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let opts = options(
            InstallLocation::Prefix(tmp.path().to_path_buf()),
            Path::new("venv/bin/python"),
        );
        let dest = install(&opts, Path::new("target/parallax")).expect("install");
        let spec = read_json(&dest.join("kernel.json"));
        let cwd = std::env::current_dir().expect("cwd");
        let exe = cwd.join("target/parallax");
        let python = cwd.join("venv/bin/python");
        assert_eq!(spec["argv"][0], json!(exe.to_str()));
        assert_eq!(spec["env"]["PARALLAX_PYTHON"], json!(python.to_str()));
    }

    #[test]
    fn sys_prefix_with_explicit_python_uses_its_env() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let python = tmp.path().join("venv/bin/python");
        let opts = options(InstallLocation::SysPrefix, &python);
        let dest = install(&opts, Path::new("/bin/parallax")).expect("install");
        assert_eq!(dest, tmp.path().join("venv/share/jupyter/kernels/parallax"));
    }

    #[test]
    fn sys_prefix_rules() {
        let venv = PathBuf::from("/active/venv");
        let cases = [
            (
                "explicit python wins",
                true,
                "/x/env/bin/python",
                Some(venv.clone()),
                Some("/x/env"),
            ),
            (
                "else the active venv",
                false,
                "/x/env/bin/python",
                Some(venv.clone()),
                Some("/active/venv"),
            ),
            (
                "else the default python's prefix",
                false,
                "/usr/bin/python3",
                None,
                Some("/usr"),
            ),
            ("a bare python has no prefix", false, "python3", None, None),
            (
                "an explicit python outside bin/",
                true,
                "/opt/python3",
                Some(venv),
                None,
            ),
        ];
        for (what, explicit, python, virtual_env, want) in cases {
            let got = sys_prefix(explicit, Path::new(python), virtual_env);
            match want {
                Some(want) => assert_eq!(got.expect(what), PathBuf::from(want), "{what}"),
                None => {
                    let err = got.expect_err(what).to_string();
                    assert!(
                        err.contains("--sys-prefix needs a Python environment"),
                        "{what}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn names_are_lowercased_and_validated() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut opts = options(
            InstallLocation::Prefix(tmp.path().to_path_buf()),
            Path::new("/p/bin/python"),
        );
        opts.name = "Parallax-Dev_2.0".to_owned();
        let dest = install(&opts, Path::new("/bin/parallax")).expect("install");
        assert_eq!(
            dest.file_name().and_then(|n| n.to_str()),
            Some("parallax-dev_2.0")
        );

        for bad in ["", "a b", "../evil", "x/y", "naïve", "tab\t"] {
            opts.name = bad.to_owned();
            let err = install(&opts, Path::new("/bin/parallax"))
                .expect_err(bad)
                .to_string();
            assert!(err.starts_with("invalid kernel name"), "{bad:?}: {err}");
        }
        let kernels = tmp.path().join("share/jupyter/kernels");
        let entries: Vec<_> = fs::read_dir(kernels).expect("kernels dir").collect();
        assert_eq!(entries.len(), 1, "bad names wrote nothing");
    }

    #[test]
    fn reinstall_replaces_the_old_spec() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let opts = options(
            InstallLocation::Prefix(tmp.path().to_path_buf()),
            Path::new("/p/bin/python"),
        );
        let dest = install(&opts, Path::new("/bin/parallax")).expect("install");
        fs::write(dest.join("stale.txt"), "old").expect("write");
        install(&opts, Path::new("/bin/parallax")).expect("reinstall");
        assert!(!dest.join("stale.txt").exists());
        assert!(dest.join("kernel.json").is_file());
    }

    #[test]
    fn uninstall_removes_only_parallax_specs() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (a, b, c) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        for prefix in [&a, &b] {
            let opts = options(
                InstallLocation::Prefix(prefix.clone()),
                Path::new("/p/bin/python"),
            );
            install(&opts, Path::new("/usr/local/bin/parallax")).expect("install");
        }
        // Same name, different kernel: must survive.
        let foreign = c.join("share/jupyter/kernels/Parallax");
        fs::create_dir_all(&foreign).expect("mkdir");
        fs::write(
            foreign.join("kernel.json"),
            r#"{"argv": ["python3", "-m", "parallax_kernel"], "display_name": "x"}"#,
        )
        .expect("write");

        let data_dirs: Vec<PathBuf> = [&a, &b, &c]
            .iter()
            .map(|p| p.join("share/jupyter"))
            .collect();
        let removed = uninstall_from("PARALLAX", &data_dirs).expect("uninstall");
        assert_eq!(
            removed,
            [
                a.join("share/jupyter/kernels/parallax"),
                b.join("share/jupyter/kernels/parallax"),
            ]
        );
        assert!(removed.iter().all(|d| !d.exists()));
        assert!(foreign.join("kernel.json").is_file());

        let err = uninstall_from("parallax", &data_dirs)
            .expect_err("nothing left")
            .to_string();
        assert!(
            err.starts_with("no parallax kernelspec named parallax is installed"),
            "{err}"
        );
        assert!(err.contains("not parallax"), "{err}");
        let err = uninstall_from("other", &data_dirs)
            .expect_err("none")
            .to_string();
        assert_eq!(err, "no parallax kernelspec named other is installed");
    }
}
