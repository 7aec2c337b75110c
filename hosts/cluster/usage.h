/* --help of im-gateway and im-service. */
#ifndef HCLUSTER_USAGE_H
#define HCLUSTER_USAGE_H

#include "config.h"

void hcluster_usage(imchatd_role role);

#endif
