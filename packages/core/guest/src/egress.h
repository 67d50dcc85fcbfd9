/*
 * Mediated egress in the guest: trust the egress proxy's CA the way each distro and runtime looks
 * for trust, and default the proxy variables the host chose (README.md, "Mediated egress").
 */
#ifndef HM_EGRESS_H
#define HM_EGRESS_H

#include <stddef.h>

#include "config.h"

#define CA_DROPIN "/usr/local/share/ca-certificates/hypeman-egress.crt"

/*
 * Appends the CA to every system bundle present (replacing the block an earlier boot added), drops
 * it where the distros' update tools pick it up, then adds the CA and proxy variables to
 * cfg->env where they are not set. Works on "/": the guest runs it in the switched root.
 */
int egress_install(struct guest_config *cfg, char *err, size_t cap);

/* Pure: `bundle` with any earlier hypeman block removed and `pem` appended in a marked block. Caller frees. */
char *ca_bundle_merge(const char *bundle, size_t len, const char *pem, size_t *outlen);

#endif
