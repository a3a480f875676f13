//! Mixed precision: bf16 autocast around the encoders' forward pass.
//!
//! With `precision = "bf16"` the forward pass runs under libtorch's autocast
//! (what `torch.autocast(device_type, dtype=torch.bfloat16)` does in open_clip's
//! `--precision amp_bf16`): matrix products and convolutions take bf16 inputs,
//! reductions and layer norms stay in fp32, parameters and optimizer state stay
//! fp32. The features leave the encoders as fp32, so the all-gather, the loss
//! and the gradient all-reduce are unchanged. The backward pass runs outside the
//! autocast region, as PyTorch recommends.
//!
//! tch exposes only the CUDA on/off switch (fp16 by default). bf16 needs
//! `at::autocast::set_autocast_dtype`, which is bound here by its C++ name from
//! libtorch_cpu (always linked through torch-sys).

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

/// Numeric precision of the training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in fp32 (the default; the only mode with bit-exact resume checks).
    #[default]
    Fp32,
    /// bf16 autocast in the forward pass, fp32 weights, optimizer and loss.
    Bf16,
}

mod ffi {
    // at::autocast (ATen/autocast_mode.h). c10::DeviceType and c10::ScalarType
    // are `enum class : int8_t`, passed as 8-bit integers.
    extern "C" {
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device: i8) -> bool;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device: i8) -> i8;
    }
}

/// c10::DeviceType of a tch device (autocast is per device type).
fn device_type(device: Device) -> i8 {
    match device {
        Device::Cuda(_) => 1,
        // Autocast on CPU is real too (bf16 kernels); it is what the CPU tests use.
        _ => 0,
    }
}

/// Autocast to `dtype` on `device`'s type while alive; restores the previous
/// state (and clears the cast-weight cache at the outermost level) on drop.
pub struct AutocastGuard {
    device: i8,
    prev_enabled: bool,
    prev_dtype: i8,
}

impl AutocastGuard {
    /// Turns autocast on for `device`'s type with `dtype` (BFloat16 or Half).
    ///
    /// # Panics
    /// For any other `dtype`.
    pub fn enter(device: Device, dtype: Kind) -> Self {
        // c10::ScalarType's values.
        let dtype: i8 = match dtype {
            Kind::Half => 5,
            Kind::BFloat16 => 15,
            other => panic!("autocast to {other:?}: only Half and BFloat16 are reduced precisions"),
        };
        let device = device_type(device);
        // SAFETY: plain setters/getters of thread-local autocast state.
        let (prev_enabled, prev_dtype) = unsafe { (ffi::is_autocast_enabled(device), ffi::get_autocast_dtype(device)) };
        unsafe {
            ffi::set_autocast_dtype(device, dtype);
            ffi::set_autocast_enabled(device, true);
            torch_sys::at_autocast_increment_nesting();
        }
        Self {
            device,
            prev_enabled,
            prev_dtype,
        }
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        unsafe {
            if torch_sys::at_autocast_decrement_nesting() == 0 {
                torch_sys::at_autocast_clear_cache();
            }
            ffi::set_autocast_enabled(self.device, self.prev_enabled);
            ffi::set_autocast_dtype(self.device, self.prev_dtype);
        }
    }
}

/// Whether autocast is on for `device`'s type in this thread.
pub fn autocast_enabled(device: Device) -> bool {
    // SAFETY: a getter of thread-local state.
    unsafe { ffi::is_autocast_enabled(device_type(device)) }
}

/// Runs `f` (a forward pass) in `precision` on `device`.
pub fn with_precision<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    match precision {
        Precision::Fp32 => f(),
        Precision::Bf16 => {
            let _guard = AutocastGuard::enter(device, Kind::BFloat16);
            f()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::clip_loss;
    use crate::model::{Clip, ModelConfig};
    use tch::{nn, Tensor};

    #[test]
    fn bf16_autocast_casts_matmuls_and_is_undone_afterwards() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        assert!(!autocast_enabled(Device::Cpu));
        let inside = with_precision(Precision::Bf16, Device::Cpu, || {
            assert!(autocast_enabled(Device::Cpu));
            a.matmul(&b)
        });
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert!(!autocast_enabled(Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        let fp32 = with_precision(Precision::Fp32, Device::Cpu, || a.matmul(&b));
        assert_eq!(fp32.kind(), Kind::Float);
    }

    #[test]
    fn bf16_forward_gives_fp32_features_close_to_fp32_and_fp32_gradients() {
        tch::manual_seed(0);
        let cfg = ModelConfig::load("tiny").unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Clip::new(&vs.root(), &cfg);
        let size = cfg.vision.image_size as i64;
        let images = Tensor::randn([4, 3, size, size], (Kind::Float, Device::Cpu));
        let tokens = Tensor::randint_low(1, 1000, [4, cfg.text.context_length as i64], (Kind::Int64, Device::Cpu));
        let (i32_, t32, s) = model.forward(&images, &tokens, true);
        let loss32 = clip_loss(&i32_, &t32, &s).double_value(&[]);
        let (i16_, t16, s16) = with_precision(Precision::Bf16, Device::Cpu, || {
            // Autocast really is on inside: the image tower's output is bf16.
            assert_eq!(model.encode_image(&images, true).kind(), Kind::BFloat16);
            model.forward(&images, &tokens, true)
        });
        assert_eq!((i16_.kind(), t16.kind()), (Kind::Float, Kind::Float));
        let diff = (&i16_ - &i32_).abs().max().double_value(&[]);
        assert!(
            diff > 0.0 && diff < 0.05,
            "bf16 vs fp32 image features differ by {diff}"
        );
        let loss = clip_loss(&i16_, &t16, &s16);
        assert!((loss.double_value(&[]) - loss32).abs() < 0.05 * loss32.abs());
        loss.backward();
        for (name, var) in vs.variables() {
            let grad = var.grad();
            if grad.defined() {
                assert_eq!(grad.kind(), Kind::Float, "{name}");
            }
        }
    }
}
