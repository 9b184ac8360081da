//! cli (in progress)
pub fn main() -> i32 {
    crate::exit::OK
}
