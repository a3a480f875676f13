// The binary's targets need what the trainer's own targets need (an rpath to libtorch; with
// the `cuda` feature, libtorch_cuda kept in DT_NEEDED): the trainer's link arguments
// (trainer/build_link.rs), printed for this package too. Link arguments apply only to the
// package whose build script prints them.
mod trainer_build {
    include!("trainer/build_link.rs");
}

fn main() {
    println!("cargo:rerun-if-changed=trainer/build_link.rs");
    trainer_build::main();
}
