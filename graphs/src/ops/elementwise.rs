//! Element-wise ops with numpy broadcasting: arithmetic, activations, comparisons, casts.

use crate::{attr, broadcast, show_shape, DType, Graph, Result, T};

impl Graph {
    fn binary(&self, op: &str, a: T, b: T) -> Result<T> {
        let (da, db) = (self.dtype_of(a), self.dtype_of(b));
        if da != db {
            return Err(self.err(op, format!("input dtypes differ: {da} vs {db}")));
        }
        let (sa, sb) = (self.shape_of(a), self.shape_of(b));
        let shape = broadcast(&sa, &sb).ok_or_else(|| {
            self.err(op, format!("shapes {} and {} do not broadcast", show_shape(&sa), show_shape(&sb)))
        })?;
        let out = if matches!(op, "Equal" | "Less" | "Greater" | "And" | "Or") { DType::Bool } else { da };
        Ok(self.node1(op, &[a, b], vec![], out, shape))
    }

    fn unary(&self, op: &str, x: T) -> T {
        self.node1(op, &[x], vec![], self.dtype_of(x), self.shape_of(x))
    }

    /// `a + b`
    pub fn add(&self, a: T, b: T) -> Result<T> {
        self.binary("Add", a, b)
    }
    /// `a - b`
    pub fn sub(&self, a: T, b: T) -> Result<T> {
        self.binary("Sub", a, b)
    }
    /// `a * b`
    pub fn mul(&self, a: T, b: T) -> Result<T> {
        self.binary("Mul", a, b)
    }
    /// `a / b`
    pub fn div(&self, a: T, b: T) -> Result<T> {
        self.binary("Div", a, b)
    }
    /// `a ^ b`
    pub fn pow(&self, a: T, b: T) -> Result<T> {
        self.binary("Pow", a, b)
    }
    /// `max(a, b)`
    pub fn max(&self, a: T, b: T) -> Result<T> {
        self.binary("Max", a, b)
    }
    /// `a == b` (bool)
    pub fn equal(&self, a: T, b: T) -> Result<T> {
        self.binary("Equal", a, b)
    }
    /// `a < b` (bool)
    pub fn less(&self, a: T, b: T) -> Result<T> {
        self.binary("Less", a, b)
    }
    /// `a > b` (bool)
    pub fn greater(&self, a: T, b: T) -> Result<T> {
        self.binary("Greater", a, b)
    }
    /// `a && b` (bool)
    pub fn and(&self, a: T, b: T) -> Result<T> {
        self.binary("And", a, b)
    }
    /// `a || b` (bool)
    pub fn or(&self, a: T, b: T) -> Result<T> {
        self.binary("Or", a, b)
    }

    pub fn sqrt(&self, x: T) -> T {
        self.unary("Sqrt", x)
    }
    pub fn exp(&self, x: T) -> T {
        self.unary("Exp", x)
    }
    pub fn sin(&self, x: T) -> T {
        self.unary("Sin", x)
    }
    pub fn cos(&self, x: T) -> T {
        self.unary("Cos", x)
    }
    pub fn neg(&self, x: T) -> T {
        self.unary("Neg", x)
    }
    pub fn sigmoid(&self, x: T) -> T {
        self.unary("Sigmoid", x)
    }
    pub fn tanh(&self, x: T) -> T {
        self.unary("Tanh", x)
    }
    pub fn reciprocal(&self, x: T) -> T {
        self.unary("Reciprocal", x)
    }
    /// Round half to even.
    pub fn round(&self, x: T) -> T {
        self.unary("Round", x)
    }
    pub fn not(&self, x: T) -> T {
        self.unary("Not", x)
    }
    pub fn identity(&self, x: T) -> T {
        self.unary("Identity", x)
    }

    /// `x * sigmoid(x)`
    pub fn silu(&self, x: T) -> Result<T> {
        let s = self.sigmoid(x);
        self.mul(x, s)
    }

    /// `silu(a) * b`: the SwiGLU gate.
    pub fn swiglu(&self, a: T, b: T) -> Result<T> {
        let s = self.silu(a)?;
        self.mul(s, b)
    }

    /// Converts to another element type.
    pub fn cast(&self, x: T, to: DType) -> T {
        if self.dtype_of(x) == to {
            return x;
        }
        self.node1("Cast", &[x], vec![attr::int("to", to.onnx() as i64)], to, self.shape_of(x))
    }

    /// `cond ? a : b`
    pub fn where_(&self, cond: T, a: T, b: T) -> Result<T> {
        if self.dtype_of(cond) != DType::Bool {
            return Err(self.err("Where", "condition must be bool"));
        }
        let ab = broadcast(&self.shape_of(a), &self.shape_of(b))
            .ok_or_else(|| self.err("Where", "branches do not broadcast"))?;
        let shape = broadcast(&self.shape_of(cond), &ab)
            .ok_or_else(|| self.err("Where", "condition does not broadcast"))?;
        if self.dtype_of(a) != self.dtype_of(b) {
            return Err(self.err("Where", "branch dtypes differ"));
        }
        Ok(self.node1("Where", &[cond, a, b], vec![], self.dtype_of(a), shape))
    }
}
