// The binary's targets need what the trainer's own targets need (an rpath to libtorch; with
// the `cuda` feature, libtorch_cuda kept in DT_NEEDED): the trainer's build script, run for
// this package too. Link arguments apply only to the package whose build script prints them.
mod trainer_build {
    include!("trainer/build.rs");
}

fn main() {
    println!("cargo:rerun-if-changed=trainer/build.rs");
    trainer_build::main();
}
