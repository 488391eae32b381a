//! Series → Volume (in progress): slice ordering and stack checks live in [`sort`].

pub mod sort;
