//! Random batches for the step benchmarks (examples `max_batch` and `overlap_step`).

use tch::{Device, Kind, Tensor};
use trainer::data::{BatchSource, PixelNormalization, TensorBatch};
use trainer::TrainError;

/// Random micro-batches of `rows`: images and captions of the model's shapes.
pub struct RandomBatches {
    pub rows: i64,
    pub image_size: i64,
    pub context: i64,
    pub u8_levels: bool,
}

impl BatchSource for RandomBatches {
    fn next_batch(&mut self) -> Result<TensorBatch, TrainError> {
        let shape = [self.rows, 3, self.image_size, self.image_size];
        let (images, normalization) = if self.u8_levels {
            let levels = Tensor::randint(256, shape, (Kind::Uint8, Device::Cpu));
            (levels, Some(PixelNormalization::clip()))
        } else {
            (Tensor::randn(shape, (Kind::Float, Device::Cpu)), None)
        };
        // <start_of_text> random words <end_of_text>, padded: the end token is the largest id.
        let words = Tensor::randint_low(1, 40_000, [self.rows, self.context], (Kind::Int64, Device::Cpu));
        let tokens = words.narrow(1, 0, self.context - 1).copy();
        let tokens = Tensor::cat(
            &[
                Tensor::full([self.rows, 1], 49406, (Kind::Int64, Device::Cpu)),
                tokens.narrow(1, 0, self.context - 2),
                Tensor::full([self.rows, 1], 49407, (Kind::Int64, Device::Cpu)),
            ],
            1,
        );
        Ok(TensorBatch::from_tensors(images, normalization, tokens, 0))
    }
}
