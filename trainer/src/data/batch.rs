//! A training batch as tensors: [`TensorBatch`] wraps the loader's image buffer without
//! a copy, and [`PixelNormalization`] turns u8 batches into the model's f32 input on the
//! training device (`data.normalize = "device"`).
//!
//! The one `unsafe` of the data side is here, in `loader_buffer_tensor`: a tensor made
//! over memory libtorch does not own. Its rule, kept by [`TensorBatch`]: the buffer
//! lives as long as the batch, and the batch is dropped after every tensor that shares
//! its memory. Safe code cannot get such a tensor: [`TensorBatch::images`] and
//! [`TensorBatch::images_normalized`] copy where they would share the buffer, and the one
//! accessor that does not copy, [`TensorBatch::model_input`], is `unsafe` (the train step
//! calls it and drops what it made within the micro-batch).

use tch::{Kind, Tensor};

/// CLIP normalisation of u8 images as one per-channel affine map, `v · 1/(255·std) +
/// (−mean/std)`, for images normalised on the training device (`data.normalize =
/// "device"`). Made once (on the CPU); moving its two 3-value tensors to the device is
/// nothing beside the images.
pub struct PixelNormalization {
    /// `(1,3,1,1)` f32: 1/(255·std).
    scale: Tensor,
    /// `(1,3,1,1)` f32: −mean/std.
    shift: Tensor,
}

impl PixelNormalization {
    /// CLIP (OpenAI) mean and std, as the loader's f32 output uses.
    pub fn clip() -> Self {
        // The loader's own constants: it computes level·scale + shift in f32 too (a multiply,
        // then an add), so on a CPU both `data.normalize` modes give the same bits.
        let scale = dataloader::CLIP_PIXEL_SCALE;
        let shift = dataloader::CLIP_PIXEL_SHIFT;
        Self {
            scale: Tensor::from_slice(&scale).view([1, 3, 1, 1]),
            shift: Tensor::from_slice(&shift).view([1, 3, 1, 1]),
        }
    }

    /// The same map, sharing the tensors.
    pub fn shallow_clone(&self) -> Self {
        Self {
            scale: self.scale.shallow_clone(),
            shift: self.shift.shallow_clone(),
        }
    }

    /// `(B,3,H,W)` u8 images → normalised f32 on their device.
    pub fn apply(&self, images_u8: &Tensor) -> Tensor {
        let device = images_u8.device();
        let mut images = images_u8.to_kind(Kind::Float);
        // In place: one f32 batch allocated, not three.
        let _ = images.g_mul_(&self.scale.to_device(device));
        let _ = images.g_add_(&self.shift.to_device(device));
        images
    }
}

/// A `(size, 3, image_size, image_size)` CPU tensor over the loader buffer at `ptr` holding
/// `len` elements of `kind`, without a copy.
///
/// Panics if `len` is not `size × 3 × image_size²`, which the loader guarantees (wrapping a
/// shorter buffer would read past its end).
///
/// # Safety
/// The buffer must stay allocated, unmoved and untouched by anything else for as long as the
/// tensor or any tensor sharing its storage lives ([`TensorBatch`] owns both and drops the
/// buffer last).
unsafe fn loader_buffer_tensor(ptr: *const u8, len: usize, kind: Kind, size: usize, image_size: usize) -> Tensor {
    assert_eq!(
        len,
        size * 3 * image_size * image_size,
        "loader batch of {size} images of {image_size} px"
    );
    let dims = [size as i64, 3, image_size as i64, image_size as i64];
    // SAFETY: `ptr` covers exactly the tensor's contiguous elements (checked above); the
    // caller keeps the allocation alive and unmoved (this function's contract).
    unsafe { Tensor::from_blob(ptr, &dims, &[], kind, tch::Device::Cpu) }
}

/// A batch as tensors (images `(B,3,H,W)` f32 normalised, or u8 levels with
/// `data.normalize = "device"`; tokens `(B,L)` i64). [`TensorBatch::images_normalized`] gives
/// the model's input on a device either way.
///
/// From the loader (`TensorBatch::from_loader`, `TensorBatch::from_loader_u8`, made only by
/// [`super::TrainLoader`]) the images wrap the loader's buffer, which this struct owns,
/// without a copy. That tensor never leaves the batch through a safe call: a tensor sharing
/// the buffer that outlived the batch would read freed (or reused) memory.
pub struct TensorBatch {
    /// Normalised f32 images, or u8 levels (then `normalization` is set); private because it
    /// may wrap the loader buffer (see the type's note).
    images: Tensor,
    /// Token ids, padded.
    pub tokens: Tensor,
    /// Samples in the batch.
    pub size: usize,
    /// Data epoch the batch came from.
    pub epoch: u64,
    /// How u8 `images` become normalised f32; `None` for f32 images.
    normalization: Option<PixelNormalization>,
    /// The loader buffer `images` points into, when it does; declared after `images` so that
    /// it is dropped (and handed back to the loader for reuse) after the tensor.
    images_storage: Option<LoaderImages>,
}

/// A loader buffer a [`TensorBatch`] wraps.
enum LoaderImages {
    /// Normalised values.
    F32(#[allow(dead_code)] dataloader::BatchImages),
    /// 8-bit levels.
    U8(#[allow(dead_code)] dataloader::BatchImages<u8>),
}

impl TensorBatch {
    /// Copies flat buffers into libtorch-owned tensors.
    pub fn from_flat(images: &[f32], tokens: &[i64], size: usize, image_size: usize, epoch: u64) -> Self {
        let images = Tensor::from_slice(images).view([size as i64, 3, image_size as i64, image_size as i64]);
        Self::assemble(images, None, None, tokens, size, epoch)
    }

    /// A batch of libtorch-owned tensors: `(B,3,H,W)` f32 normalised images, or u8 levels
    /// with the `normalization` that [`TensorBatch::images_normalized`] applies, and `(B,L)`
    /// i64 token ids (benchmarks and tests that make their own batches).
    pub fn from_tensors(images: Tensor, normalization: Option<PixelNormalization>, tokens: Tensor, epoch: u64) -> Self {
        let size = images.size()[0] as usize;
        Self {
            images,
            tokens,
            size,
            epoch,
            normalization,
            images_storage: None,
        }
    }

    /// The batch of `images` (with the loader buffer they wrap, if any, and the normalisation
    /// still to apply, if any) and the token ids, copied into an `(size, L)` i64 tensor.
    fn assemble(
        images: Tensor,
        images_storage: Option<LoaderImages>,
        normalization: Option<PixelNormalization>,
        tokens: &[i64],
        size: usize,
        epoch: u64,
    ) -> Self {
        let tokens = Tensor::from_slice(tokens).view([size as i64, -1]).to_kind(Kind::Int64);
        Self {
            images_storage,
            ..Self::from_tensors(images, normalization, tokens, epoch)
        }
    }

    /// Wraps a loader batch: the images without a copy (the buffer moves into the returned
    /// value, see the type's note), the token ids copied (a few hundred KB at most).
    ///
    /// Panics if the buffer does not hold `size × 3 × image_size²` values, which the loader
    /// guarantees (wrapping a shorter buffer would read past its end).
    pub(super) fn from_loader(
        mut images: dataloader::BatchImages,
        tokens: &[i64],
        size: usize,
        image_size: usize,
        epoch: u64,
    ) -> Self {
        // SAFETY: `images` moves into the returned struct, which drops it after the tensor.
        let images_tensor = unsafe {
            loader_buffer_tensor(
                images.as_mut_ptr() as *const u8,
                images.len(),
                Kind::Float,
                size,
                image_size,
            )
        };
        Self::assemble(
            images_tensor,
            Some(LoaderImages::F32(images)),
            None,
            tokens,
            size,
            epoch,
        )
    }

    /// Wraps a u8 loader batch ([`dataloader::PixelOutput::RawU8`]) without a copy, as
    /// [`TensorBatch::from_loader`] does; `images` is then u8 and
    /// [`TensorBatch::images_normalized`] applies `normalization` on the device.
    ///
    /// Panics if the buffer does not hold `size × 3 × image_size²` values, which the loader
    /// guarantees.
    pub(super) fn from_loader_u8(
        mut images: dataloader::BatchImages<u8>,
        normalization: &PixelNormalization,
        tokens: &[i64],
        size: usize,
        image_size: usize,
        epoch: u64,
    ) -> Self {
        // SAFETY: `images` moves into the returned struct, which drops it after the tensor.
        let images_tensor =
            unsafe { loader_buffer_tensor(images.as_mut_ptr(), images.len(), Kind::Uint8, size, image_size) };
        let normalization = Some(normalization.shallow_clone());
        Self::assemble(
            images_tensor,
            Some(LoaderImages::U8(images)),
            normalization,
            tokens,
            size,
            epoch,
        )
    }

    /// The images as stored (f32 normalised, or u8 levels when the batch normalises on the
    /// device), in a tensor of their own: a copy when they wrap the loader buffer.
    pub fn images(&self) -> Tensor {
        match self.images_storage {
            Some(_) => self.images.copy(),
            None => self.images.shallow_clone(),
        }
    }

    /// The model's input on `device` (see [`TensorBatch::model_input`]) in a tensor of its
    /// own: where that would share the loader buffer (f32 images on the CPU), a copy.
    pub fn images_normalized(&self, device: tch::Device) -> Tensor {
        // SAFETY: the result is copied below whenever it could share the loader buffer.
        let input = unsafe { self.model_input(device) };
        match (&self.images_storage, &self.normalization, device) {
            (Some(_), None, tch::Device::Cpu) => input.copy(),
            _ => input,
        }
    }

    /// The model's input on `device`: f32 images moved there, or u8 images moved there (a
    /// quarter of the bytes) and then normalised there. Without a copy where none is needed:
    /// f32 images wrapping the loader buffer, asked for on the CPU, come back as that buffer.
    ///
    /// # Safety
    /// The returned tensor may share the batch's loader buffer: it, every view of it and
    /// every autograd graph that saved it must be dropped before the batch.
    pub unsafe fn model_input(&self, device: tch::Device) -> Tensor {
        match &self.normalization {
            None => self.images.to_device(device),
            Some(normalization) => normalization.apply(&self.images.to_device(device)),
        }
    }

    /// Element type of the stored images (`Float`, or `Uint8` when normalised on the device).
    pub fn images_kind(&self) -> Kind {
        self.images.kind()
    }

    /// Whether `images` wraps the loader's buffer (no copy was made).
    pub fn wraps_loader_buffer(&self) -> bool {
        self.images_storage.is_some()
    }
}
