// The link arguments every target that links libtorch needs (shared with the root package's
// build script), and the C++ shim of the fused AdamW kernel, which only this crate compiles.
mod link {
    include!("build_link.rs");
}

fn main() {
    println!("cargo:rerun-if-changed=build_link.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    link::main();
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        compile_shim(std::path::Path::new(&lib));
    }
}

/// trainer/csrc/fused_adamw.cpp: libtorch's fused AdamW, which tch does not bind
/// (trainer/src/optim/fused.rs). Headers beside libtorch's `lib/`, the C++ ABI torch-sys uses.
fn compile_shim(lib: &std::path::Path) {
    let root = lib.parent().unwrap_or(lib);
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rerun-if-changed=csrc/fused_adamw.cpp");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .file("csrc/fused_adamw.cpp")
        .compile("ferroclip_fused_adamw");
}
