//! Files between a browser user and a terminal user.
