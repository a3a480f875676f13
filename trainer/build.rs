// Embed libtorch's directory as an rpath so the binary runs without LD_LIBRARY_PATH.
// DEP_TCH_LIBTORCH_LIB is exported by torch-sys (links = "tch") to direct dependents.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
