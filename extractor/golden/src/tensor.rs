//! A checkpoint's data: f32, row-major, with its shape.

/// A tensor as the run stores it: row-major (outermost dimension first),
/// converted to f32 from the node's type.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` holding `data`; `None` when their sizes differ.
    ///
    /// ```
    /// use llorch_checkpoint_golden::Tensor;
    /// let t = Tensor::new(vec![2, 3], vec![0.0; 6]).unwrap();
    /// assert_eq!(t.len(), 6);
    /// assert!(Tensor::new(vec![2, 3], vec![0.0; 5]).is_none());
    /// ```
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len()).then_some(Tensor { shape, data })
    }

    /// Row-major, outermost first: `[n_tokens, n_embd]` for a norm output.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements, owned.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The tensor as an `ndarray` view of its shape.
    ///
    /// ```
    /// use llorch_checkpoint_golden::Tensor;
    /// let t = Tensor::new(vec![2, 3], (0..6).map(|i| i as f32).collect()).unwrap();
    /// assert_eq!(t.view()[[1, 2]], 5.0);
    /// ```
    #[cfg(feature = "ndarray")]
    pub fn view(&self) -> ndarray::ArrayViewD<'_, f32> {
        ndarray::ArrayViewD::from_shape(self.shape.as_slice(), &self.data)
            .expect("a Tensor's shape holds its data (checked when made)")
    }
}
