//! `ProcessingRunner` for sdrt: the one execution boundary (prepare → execute → finalize, with hooks),
//! model provider, execution queue, progress, interrupt and metrics.
