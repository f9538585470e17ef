//! Support code shared by tollgate's examples (`examples/`) and its black-box HTTP
//! tests (`tests/`). Not published; see the `tollgate` crate for the library.
