// CCE intrinsics the real headers call for the cube API loraops uses that
// the shared ascend-typecheck prelude lacks. Append to a copy of it:
//   cat /work/shared/ascend-typecheck/prelude.h kernels/ascend/common/typecheck_prelude_additions.h >/tmp/prelude.h
//   PRELUDE=/tmp/prelude.h CXX=clang++-14 bash /work/shared/ascend-typecheck/typecheck.sh --cube FILE
LORAOPS_STUB_INTRINSIC_VOID(load_cbuf_to_ca_transpose)
LORAOPS_STUB_INTRINSIC_VOID(load_cbuf_to_cb_transpose)
