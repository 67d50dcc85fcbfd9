/*
 * File copy into and out of the guest, run by the agent as built-in programs of an exec session
 * (so stdin/stdout streaming, flow control, timeouts and exit codes are the exec machinery's):
 *   write-file PATH MODE   stdin → PATH (created or truncated, then chmod MODE, octal); prints bytes
 *   mkdir PATH MODE        PATH and missing parents; an existing directory is fine
 *   read-tree PATH FOLLOW  a tar stream (ustar with GNU long names) of PATH and, for a directory,
 *                          everything below it; FOLLOW "1" follows PATH itself when it is a symlink
 *   mount-volume SERIAL MODE PATH   a hot-plugged volume's disk (waited for) at PATH, as init mounts
 *                          volumes at boot; MODE rw, ro or overlay=SERIAL (volumes.c)
 *   umount-volume PATH     unmounts PATH, never lazily; exit 16 when it is busy, 0 when nothing
 *                          is mounted there (volumes.c)
 * Each returns the exit code; failures are one line on stderr.
 */
#ifndef HM_FILES_H
#define HM_FILES_H

int builtin_known(const char *name);
/* Runs builtin `name` with argv (NULL-terminated): its exit code. */
int run_builtin(const char *name, char *const *argv);

#endif
