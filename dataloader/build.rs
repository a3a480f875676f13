//! Links libjpeg-turbo's TurboJPEG library statically when the `turbojpeg` feature is on, so
//! the binary carries no run-time dependency on it (the GPU machines do not have it). With
//! `turbojpeg-shared` it links the shared library instead: Debian's static archive is not
//! position-independent, so a shared object (the Python extension) cannot take it in.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TURBOJPEG_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_TURBOJPEG").is_none() {
        return;
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("TURBOJPEG_LIB_DIR") {
        candidates.push(dir.into());
    }
    if let Ok(output) = Command::new("pkg-config")
        .args(["--variable=libdir", "libturbojpeg"])
        .output()
    {
        if output.status.success() {
            candidates.push(String::from_utf8_lossy(&output.stdout).trim().into());
        }
    }
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ] {
        candidates.push(dir.into());
    }
    let shared = std::env::var_os("CARGO_FEATURE_TURBOJPEG_SHARED").is_some();
    let (file, kind) = match shared {
        true => ("libturbojpeg.so", "dylib"),
        false => ("libturbojpeg.a", "static"),
    };
    match candidates.iter().find(|dir| Path::new(dir).join(file).is_file()) {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib={kind}=turbojpeg");
        }
        None => panic!(
            "{file} not found (searched {candidates:?}): install Debian's libturbojpeg0-dev \
             (scripts/setup.sh does), set TURBOJPEG_LIB_DIR, or build dataloader without the \
             `turbojpeg` feature"
        ),
    }
}
