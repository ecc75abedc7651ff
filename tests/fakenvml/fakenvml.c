/*
 * A fake libnvidia-ml.so.1 for tests: the NVML entry points ds01 calls, with the names and
 * struct layouts of nvml.h, driven by a scenario file (see README.md next to this file).
 *
 * Build: cc -shared -fPIC -o libnvidia-ml.so.1 fakenvml.c
 *   -DFAKE_NO_PROC_V3  a driver without nvmlDeviceGetComputeRunningProcesses_v3 (R450-R510 era)
 *   -DFAKE_NO_PROC_V2  ... and without _v2 either (only the unversioned v1 call)
 *   -DFAKE_NO_GPM      a driver without the GPM entry points
 * The scenario file is named by FAKENVML_SCENARIO and re-read when it changes, so a test can
 * change activity between two reads by replacing the file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_NO_PERMISSION = 4, NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7, NVML_ERROR_DRIVER_NOT_LOADED = 9, NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15, NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999
};

/* ---- nvml.h layouts ---------------------------------------------------------------------- */
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t; /* nvmlProcessInfo_t, used by _v3, has this same layout */
typedef struct { unsigned int version; unsigned int isSupportedDevice; } nvmlGpmSupport_t;
#define NVML_GPM_METRIC_MAX 98 /* CUDA 12.0 nvml.h; the library reads numMetrics entries */
#define NVML_GPM_METRIC_GRAPHICS_UTIL 1
#define NVML_GPM_METRIC_SM_UTIL 2
typedef struct fake_sample *nvmlGpmSample_t;
typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    struct { char *shortName; char *longName; char *unit; } metricInfo;
} nvmlGpmMetric_t;
typedef struct {
    unsigned int version;
    unsigned int numMetrics;
    nvmlGpmSample_t sample1;
    nvmlGpmSample_t sample2;
    nvmlGpmMetric_t metrics[NVML_GPM_METRIC_MAX];
} nvmlGpmMetricsGet_t;

/* ---- the fake's state --------------------------------------------------------------------- */
#define MAGIC 0x4e564d4c
#define MAX_GPUS 8
#define MAX_MIG 8
#define MAX_PROCS 16
#define MAX_FAILS 32

typedef struct fake_dev {
    int magic, present, is_mig, gpu_index, mig_index;
    char uuid[96], name[96];
    unsigned long long mem_total, mem_used;
    int mig_mode; /* -1: not MIG capable (NOT_SUPPORTED) */
    int gpm, max_mig;
    unsigned int util_gpu, util_mem, gi, ci;
    double gpm_graphics, gpm_sm;
    int nproc;
    unsigned int pids[MAX_PROCS];
    unsigned long long pmem[MAX_PROCS];
    struct fake_dev *parent;
} fake_dev;

struct fake_sample {
    int magic;
    fake_dev *dev;
    unsigned long long seq;
    double graphics, sm; /* accumulated busy "time" at this sample */
};

typedef struct { char call[64]; char target[16]; nvmlReturn_t error; } fake_fail;

static fake_dev gpus[MAX_GPUS];
static fake_dev migs[MAX_GPUS][MAX_MIG];
static int ngpus, initialised;
static nvmlReturn_t init_error;
static char driver[80] = "550.54.15";
static fake_fail fails[MAX_FAILS];
static int nfails;
static struct stat loaded;

static nvmlReturn_t error_code(const char *name) {
    static const struct { const char *name; nvmlReturn_t code; } names[] = {
        {"UNINITIALIZED", 1}, {"INVALID_ARGUMENT", 2}, {"NOT_SUPPORTED", 3},
        {"NO_PERMISSION", 4}, {"NOT_FOUND", 6}, {"INSUFFICIENT_SIZE", 7},
        {"DRIVER_NOT_LOADED", 9}, {"TIMEOUT", 10}, {"FUNCTION_NOT_FOUND", 13},
        {"GPU_IS_LOST", 15}, {"RESET_REQUIRED", 16}, {"UNKNOWN", 999},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i].name, name) == 0) return names[i].code;
    fprintf(stderr, "fakenvml: unknown error name %s\n", name);
    exit(3);
}

/* Parse "0" or "0:3" into a device; NULL when it does not exist. */
static fake_dev *device_ref(const char *ref) {
    int g = -1, m = -1;
    if (sscanf(ref, "%d:%d", &g, &m) < 1 || g < 0 || g >= MAX_GPUS) return NULL;
    if (m < 0) return &gpus[g];
    return m < MAX_MIG ? &migs[g][m] : NULL;
}

static void parse_line(char *line, int lineno, const char *path) {
    char *kind = strtok(line, " \t\r\n");
    if (kind == NULL || kind[0] == '#') return;
    char *kv[24];
    int n = 0;
    char *tok;
    while (n < 24 && (tok = strtok(NULL, " \t\r\n")) != NULL) {
        if (strncmp(tok, "name=", 5) == 0) {
            /* name= takes the rest of the line */
            char *rest = strtok(NULL, "\r\n");
            if (rest != NULL) tok[strlen(tok)] = ' ';
            kv[n++] = tok;
            break;
        }
        kv[n++] = tok;
    }
    const char *get[24][2];
    for (int i = 0; i < n; i++) {
        char *eq = strchr(kv[i], '=');
        if (eq == NULL) {
            fprintf(stderr, "fakenvml: %s:%d: %s is not key=value\n", path, lineno, kv[i]);
            exit(3);
        }
        *eq = '\0';
        get[i][0] = kv[i];
        get[i][1] = eq + 1;
    }
#define EACH for (int i = 0; i < n; i++)
#define KEY(k) (strcmp(get[i][0], k) == 0)
#define VAL get[i][1]
    if (strcmp(kind, "driver") == 0) {
        EACH if (KEY("version")) snprintf(driver, sizeof driver, "%s", VAL);
    } else if (strcmp(kind, "init") == 0) {
        EACH if (KEY("error")) init_error = error_code(VAL);
    } else if (strcmp(kind, "gpu") == 0 || strcmp(kind, "mig") == 0) {
        int is_mig = kind[0] == 'm', g = -1, m = -1;
        EACH {
            if (KEY("gpu") || (!is_mig && KEY("index"))) g = atoi(VAL);
            if (is_mig && KEY("index")) m = atoi(VAL);
        }
        if (g < 0 || g >= MAX_GPUS || (is_mig && (m < 0 || m >= MAX_MIG))) {
            fprintf(stderr, "fakenvml: %s:%d: bad gpu/mig index\n", path, lineno);
            exit(3);
        }
        fake_dev *d = is_mig ? &migs[g][m] : &gpus[g];
        memset(d, 0, sizeof *d);
        d->magic = MAGIC;
        d->present = 1;
        d->is_mig = is_mig;
        d->gpu_index = g;
        d->mig_index = m;
        d->mig_mode = -1;
        d->max_mig = 7;
        d->parent = is_mig ? &gpus[g] : NULL;
        EACH {
            if (KEY("uuid")) snprintf(d->uuid, sizeof d->uuid, "%s", VAL);
            if (KEY("name")) snprintf(d->name, sizeof d->name, "%s", VAL);
            if (KEY("mem_total")) d->mem_total = strtoull(VAL, NULL, 10);
            if (KEY("mem_used")) d->mem_used = strtoull(VAL, NULL, 10);
            if (KEY("mig")) d->mig_mode = strcmp(VAL, "none") == 0 ? -1 : atoi(VAL);
            if (KEY("gpm")) d->gpm = atoi(VAL);
            if (KEY("max_mig")) d->max_mig = atoi(VAL);
            if (KEY("util")) d->util_gpu = (unsigned)atoi(VAL);
            if (KEY("util_mem")) d->util_mem = (unsigned)atoi(VAL);
            if (KEY("gi")) d->gi = (unsigned)atoi(VAL);
            if (KEY("ci")) d->ci = (unsigned)atoi(VAL);
            if (KEY("gpm_graphics")) d->gpm_graphics = atof(VAL);
            if (KEY("gpm_sm")) d->gpm_sm = atof(VAL);
        }
        if (!is_mig && g + 1 > ngpus) ngpus = g + 1;
    } else if (strcmp(kind, "proc") == 0) {
        fake_dev *d = NULL;
        unsigned int pid = 0;
        unsigned long long mem = 0;
        EACH {
            if (KEY("device")) d = device_ref(VAL);
            if (KEY("pid")) pid = (unsigned)strtoul(VAL, NULL, 10);
            if (KEY("mem")) mem = strcmp(VAL, "na") == 0 ? ~0ULL : strtoull(VAL, NULL, 10);
        }
        if (d == NULL || !d->present || d->nproc >= MAX_PROCS) {
            fprintf(stderr, "fakenvml: %s:%d: proc needs an existing device=\n", path, lineno);
            exit(3);
        }
        d->pids[d->nproc] = pid;
        d->pmem[d->nproc++] = mem;
    } else if (strcmp(kind, "fail") == 0) {
        if (nfails >= MAX_FAILS) return;
        fake_fail *f = &fails[nfails++];
        snprintf(f->target, sizeof f->target, "*");
        f->error = NVML_ERROR_UNKNOWN;
        EACH {
            if (KEY("call")) snprintf(f->call, sizeof f->call, "%s", VAL);
            if (KEY("device")) snprintf(f->target, sizeof f->target, "%s", VAL);
            if (KEY("error")) f->error = error_code(VAL);
        }
    } else {
        fprintf(stderr, "fakenvml: %s:%d: unknown record %s\n", path, lineno, kind);
        exit(3);
    }
}

/* (Re)load the scenario when the file changed; returns nonzero when there is none. */
static int load_scenario(void) {
    const char *path = getenv("FAKENVML_SCENARIO");
    struct stat st;
    if (path == NULL || stat(path, &st) != 0) return 1;
    if (st.st_ino == loaded.st_ino && st.st_size == loaded.st_size &&
        st.st_mtim.tv_sec == loaded.st_mtim.tv_sec && st.st_mtim.tv_nsec == loaded.st_mtim.tv_nsec)
        return 0;
    FILE *file = fopen(path, "r");
    if (file == NULL) return 1;
    memset(gpus, 0, sizeof gpus);
    memset(migs, 0, sizeof migs);
    ngpus = nfails = 0;
    init_error = NVML_SUCCESS;
    char line[512];
    int lineno = 0;
    while (fgets(line, sizeof line, file) != NULL) parse_line(line, ++lineno, path);
    fclose(file);
    loaded = st;
    return 0;
}

/* The injected error for this call on this device (or on any device), else NVML_SUCCESS. */
static nvmlReturn_t injected(const char *call, const fake_dev *d) {
    char ref[16] = "";
    if (d != NULL && d->is_mig) snprintf(ref, sizeof ref, "%d:%d", d->gpu_index, d->mig_index);
    else if (d != NULL) snprintf(ref, sizeof ref, "%d", d->gpu_index);
    for (int i = 0; i < nfails; i++) {
        if (strcmp(fails[i].call, call) != 0) continue;
        if (strcmp(fails[i].target, "*") == 0 || strcmp(fails[i].target, ref) == 0)
            return fails[i].error;
        /* a rule on a GPU covers calls made on its MIG devices too */
        if (d != NULL && d->is_mig && strchr(fails[i].target, ':') == NULL &&
            atoi(fails[i].target) == d->gpu_index)
            return fails[i].error;
    }
    return NVML_SUCCESS;
}

static nvmlReturn_t check(const char *call, const fake_dev *d) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (d == NULL || d->magic != MAGIC || !d->present) return NVML_ERROR_INVALID_ARGUMENT;
    return injected(call, d);
}
#define CHECK(d)                                                 \
    do {                                                         \
        nvmlReturn_t r_ = check(__func__, (const fake_dev *)(d)); \
        if (r_ != NVML_SUCCESS) return r_;                       \
    } while (0)

typedef fake_dev *nvmlDevice_t;

/* ---- init / system ------------------------------------------------------------------------ */
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (load_scenario() != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (init_error != NVML_SUCCESS) return init_error;
    nvmlReturn_t r = injected(__func__, NULL);
    if (r != NVML_SUCCESS) return r;
    initialised++;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised--;
    return NVML_SUCCESS;
}
const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}
nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (length < strlen(driver) + 1) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(version, driver);
    return NVML_SUCCESS;
}

/* ---- enumeration -------------------------------------------------------------------------- */
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    load_scenario();
    nvmlReturn_t r = injected(__func__, NULL);
    if (r != NVML_SUCCESS) return r;
    *count = (unsigned)ngpus;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (index >= (unsigned)ngpus || !gpus[index].present) return NVML_ERROR_INVALID_ARGUMENT;
    CHECK(&gpus[index]);
    *device = &gpus[index];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) {
    CHECK(d);
    if (d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned)d->gpu_index;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    CHECK(d);
    if (length < strlen(d->uuid) + 1) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(uuid, d->uuid);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    CHECK(d);
    if (length < strlen(d->name) + 1) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(name, d->name);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *memory) {
    CHECK(d);
    memory->total = d->mem_total;
    memory->used = d->mem_used;
    memory->free = d->mem_total - d->mem_used;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *util) {
    CHECK(d);
    if (d->is_mig || d->mig_mode == 1) return NVML_ERROR_NOT_SUPPORTED; /* as on real MIG */
    util->gpu = d->util_gpu;
    util->memory = d->util_mem;
    return NVML_SUCCESS;
}

/* ---- MIG ---------------------------------------------------------------------------------- */
nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending) {
    CHECK(d);
    if (d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    *current = *pending = (unsigned)d->mig_mode;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned int *count) {
    CHECK(d);
    if (d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    *count = (unsigned)d->max_mig;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned int index,
                                                 nvmlDevice_t *mig) {
    CHECK(d);
    if (d->is_mig || d->mig_mode != 1 || index >= (unsigned)d->max_mig)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (index >= MAX_MIG || !migs[d->gpu_index][index].present) return NVML_ERROR_NOT_FOUND;
    nvmlReturn_t r = injected(__func__, &migs[d->gpu_index][index]);
    if (r != NVML_SUCCESS) return r;
    *mig = &migs[d->gpu_index][index];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t d, unsigned int *is_mig) {
    CHECK(d);
    *is_mig = (unsigned)d->is_mig;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t d, nvmlDevice_t *parent) {
    CHECK(d);
    if (!d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *parent = d->parent;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t d, unsigned int *id) {
    CHECK(d);
    if (!d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *id = d->gi;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t d, unsigned int *id) {
    CHECK(d);
    if (!d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *id = d->ci;
    return NVML_SUCCESS;
}

/* ---- processes: one body, three struct layouts -------------------------------------------- */
static nvmlReturn_t processes(const char *call, nvmlDevice_t d, unsigned int *count, void *infos,
                              int version) {
    nvmlReturn_t r = check(call, d);
    if (r != NVML_SUCCESS) return r;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    /* on a GPU in MIG mode the parent lists the processes of every instance */
    const fake_dev *list[1 + MAX_MIG];
    int nlist = 0;
    list[nlist++] = d;
    if (!d->is_mig && d->mig_mode == 1)
        for (int m = 0; m < MAX_MIG; m++)
            if (migs[d->gpu_index][m].present) list[nlist++] = &migs[d->gpu_index][m];
    unsigned int total = 0;
    for (int i = 0; i < nlist; i++) total += (unsigned)list[i]->nproc;
    if (*count < total || (infos == NULL && total > 0)) {
        *count = total;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned int k = 0;
    for (int i = 0; i < nlist; i++) {
        for (int p = 0; p < list[i]->nproc; p++, k++) {
            if (version == 1) {
                nvmlProcessInfo_v1_t *out = (nvmlProcessInfo_v1_t *)infos + k;
                out->pid = list[i]->pids[p];
                out->usedGpuMemory = list[i]->pmem[p];
            } else {
                nvmlProcessInfo_v2_t *out = (nvmlProcessInfo_v2_t *)infos + k;
                out->pid = list[i]->pids[p];
                out->usedGpuMemory = list[i]->pmem[p];
                out->gpuInstanceId = list[i]->is_mig ? list[i]->gi : 0xFFFFFFFFu;
                out->computeInstanceId = list[i]->is_mig ? list[i]->ci : 0xFFFFFFFFu;
            }
        }
    }
    *count = total;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *count,
                                                  nvmlProcessInfo_v1_t *infos) {
    return processes(__func__, d, count, infos, 1);
}
#ifndef FAKE_NO_PROC_V2
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *count,
                                                     nvmlProcessInfo_v2_t *infos) {
    return processes(__func__, d, count, infos, 2);
}
#endif
#if !defined(FAKE_NO_PROC_V3) && !defined(FAKE_NO_PROC_V2)
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count,
                                                     nvmlProcessInfo_v2_t *infos) {
    return processes(__func__, d, count, infos, 3);
}
#endif

/* ---- GPM ---------------------------------------------------------------------------------- */
#ifndef FAKE_NO_GPM
/* GPM accumulators survive scenario reloads: slot = [gpu][mig index + 1] (0 = whole GPU). */
static double acc_graphics[MAX_GPUS][MAX_MIG + 1], acc_sm[MAX_GPUS][MAX_MIG + 1];
static unsigned long long acc_seq[MAX_GPUS][MAX_MIG + 1], seq;

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t d, nvmlGpmSupport_t *support) {
    CHECK(d);
    if (support->version != 1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    support->isSupportedDevice = (unsigned)(d->is_mig ? d->parent->gpm : d->gpm);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t r = injected(__func__, NULL);
    if (r != NVML_SUCCESS) return r;
    *sample = calloc(1, sizeof **sample);
    (*sample)->magic = MAGIC;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample) {
    if (sample == NULL || sample->magic != MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    sample->magic = 0;
    free(sample);
    return NVML_SUCCESS;
}
/* A sample advances the device's busy-time counters by its current rate, as hardware would. */
static void take_sample(fake_dev *d, nvmlGpmSample_t sample) {
    int slot = d->is_mig ? d->mig_index + 1 : 0;
    int g = d->gpu_index;
    seq++;
    acc_graphics[g][slot] += d->gpm_graphics * (double)(seq - acc_seq[g][slot]);
    acc_sm[g][slot] += d->gpm_sm * (double)(seq - acc_seq[g][slot]);
    acc_seq[g][slot] = seq;
    sample->dev = d;
    sample->seq = seq;
    sample->graphics = acc_graphics[g][slot];
    sample->sm = acc_sm[g][slot];
}
nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t d, nvmlGpmSample_t sample) {
    CHECK(d);
    if (sample == NULL || sample->magic != MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->gpm || d->is_mig) return NVML_ERROR_NOT_SUPPORTED;
    take_sample(d, sample);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t d, unsigned int gi, nvmlGpmSample_t sample) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (d == NULL || d->magic != MAGIC || !d->present || d->is_mig)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (sample == NULL || sample->magic != MAGIC) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->gpm) return NVML_ERROR_NOT_SUPPORTED;
    fake_dev *instance = NULL;
    for (int m = 0; m < MAX_MIG; m++)
        if (migs[d->gpu_index][m].present && migs[d->gpu_index][m].gi == gi)
            instance = &migs[d->gpu_index][m];
    if (instance == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t r = injected(__func__, instance);
    if (r != NVML_SUCCESS) return r;
    take_sample(instance, sample);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *get) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (get == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (get->version != 1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    nvmlGpmSample_t s1 = get->sample1, s2 = get->sample2;
    if (s1 == NULL || s2 == NULL || s1->magic != MAGIC || s2->magic != MAGIC ||
        s1->dev != s2->dev || s1->dev == NULL || s2->seq <= s1->seq ||
        get->numMetrics > NVML_GPM_METRIC_MAX)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t r = injected(__func__, s2->dev);
    if (r != NVML_SUCCESS) return r;
    double span = (double)(s2->seq - s1->seq);
    for (unsigned int i = 0; i < get->numMetrics; i++) {
        nvmlGpmMetric_t *m = &get->metrics[i];
        m->nvmlReturn = NVML_SUCCESS;
        m->metricInfo.unit = "%";
        if (m->metricId == NVML_GPM_METRIC_GRAPHICS_UTIL) {
            m->value = (s2->graphics - s1->graphics) / span;
            m->metricInfo.shortName = "gr_util";
            m->metricInfo.longName = "graphics utilization";
        } else if (m->metricId == NVML_GPM_METRIC_SM_UTIL) {
            m->value = (s2->sm - s1->sm) / span;
            m->metricInfo.shortName = "sm_util";
            m->metricInfo.longName = "SM utilization";
        } else {
            m->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            m->value = 0;
        }
    }
    return NVML_SUCCESS;
}
#endif
