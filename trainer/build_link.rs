// Embed libtorch's directory as an rpath so the binary runs without LD_LIBRARY_PATH.
// DEP_TCH_LIBTORCH_LIB is exported by torch-sys (links = "tch") to direct dependents.
pub fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // Feature `cuda`: rustc links with --as-needed, and nothing here references a
    // symbol of libtorch_cuda (its kernels register themselves from static
    // initialisers), so torch-sys's `-ltorch_cuda` is dropped and tch silently
    // reports no CUDA (docs/architecture.md §9). Force it into DT_NEEDED. Its own CUDA
    // dependencies (cuBLAS, NCCL, ...) need not be present at link time
    // (--allow-shlib-undefined): they are resolved on the GPU machine at run time.
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}
