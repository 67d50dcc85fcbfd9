/** Error codes of the guest assets (kernel, modules, init, initrd), on common's classes. */
import { CodedError } from '@hypeman-ts/common'

export type AssetErrorCode =
  | 'kernel_resolve_failed' // apt could not say which cloud kernel is current, and nothing is cached
  | 'kernel_download_failed'
  | 'invalid_kernel' // not an ELF vmlinux with a PVH entry, or a bzImage we cannot unpack
  | 'module_missing' // a module the guest needs is neither in modules.dep nor built in
  | 'guest_init_build_failed'
  | 'initrd_build_failed'
  | 'kernel_headers_download_failed' // apt could not give the headers packages of the guest kernel
  | 'invalid_kernel_headers' // kernel.headers is not a kernel build tree, or the packages are not laid out as expected

export class AssetError extends CodedError<AssetErrorCode>() {}
