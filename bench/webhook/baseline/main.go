// Command baseline is the Go comparison point of bench/webhook.sh: a mutating pod webhook
// written the way Go webhooks in this field usually are, on controller-runtime's
// webhook.Admission with the manager's cached client, answering with
// admission.PatchResponseFromRaw (a JSON patch computed by gomodules.xyz/jsonpatch from the
// original and the mutated pod).
//
// It injects what fedcred injects for the same pod and FederatedCredential: the Secret volume,
// the metadata emulator and one AlloyDB Auth Proxy per instance as native sidecars, the client
// environment in the application containers, and an annotation. The FederatedCredential is read
// as unstructured from the informer cache (one watch, no request to the API server per review).
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

const (
	injectLabel          = "fedcred.io/inject"
	credentialAnnotation = "fedcred.io/credential"
	injectedAnnotation   = "fedcred.io/injected"
	tokenVolume          = "fedcred-token"
	tokenMountPath       = "/var/run/fedcred"
	metadataContainer    = "fedcred-metadata"
	proxyPrefix          = "alloydb-proxy-"
	fedcredBinary        = "/usr/local/bin/fedcred"
	defaultProxyImage    = "gcr.io/alloydb-connectors/alloydb-auth-proxy:1.13.11"
	metadataPort         = 8988
	healthPort           = 9801
	runAsUser            = int64(65532)
)

var credentialGVK = schema.GroupVersionKind{Group: "fedcred.io", Version: "v1alpha1", Kind: "FederatedCredential"}

func main() {
	var (
		port         = flag.Int("port", 9443, "webhook port")
		host         = flag.String("host", "127.0.0.1", "webhook address")
		certDir      = flag.String("cert-dir", "", "directory with tls.crt and tls.key")
		namespace    = flag.String("namespace", "", "namespace whose FederatedCredentials are cached (default: all)")
		fedcredImage = flag.String("fedcred-image", "ghcr.io/example/fedcred:0.1.0", "image of the metadata sidecar")
	)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseDevMode(false)))

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		fail(err)
	}
	cacheOpts := cache.Options{}
	if *namespace != "" {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{*namespace: {}}
	}
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:  scheme,
		Cache:   cacheOpts,
		Metrics: metricsserver.Options{BindAddress: "0"},
		// Unstructured reads go through the informer cache too.
		Client: client.Options{Cache: &client.CacheOptions{Unstructured: true}},
		WebhookServer: webhook.NewServer(webhook.Options{
			Host:    *host,
			Port:    *port,
			CertDir: *certDir,
			// HTTP/1.1 only, as kubebuilder's scaffold sets it (HTTP/2 rapid reset).
			TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
		}),
	})
	if err != nil {
		fail(err)
	}
	injector := &injector{
		client:  mgr.GetClient(),
		decoder: admission.NewDecoder(scheme),
		image:   *fedcredImage,
	}
	mgr.GetWebhookServer().Register("/mutate", &webhook.Admission{Handler: injector})
	mgr.GetWebhookServer().Register("/healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))

	// Start the informer before serving, as a handler's first Get would.
	ctx := ctrl.SetupSignalHandler()
	informer := &unstructured.Unstructured{}
	informer.SetGroupVersionKind(credentialGVK)
	if _, err := mgr.GetCache().GetInformer(ctx, informer); err != nil {
		fail(err)
	}
	if err := mgr.Start(ctx); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "baseline:", err)
	os.Exit(1)
}

type injector struct {
	client  client.Client
	decoder admission.Decoder
	image   string
}

type instance struct {
	uri          string
	connectivity string
	autoIAM      bool
	port         int64
}

func (in *injector) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != "CREATE" {
		return admission.Allowed("")
	}
	pod := &corev1.Pod{}
	if err := in.decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if pod.Labels[injectLabel] != "true" {
		return admission.Allowed("")
	}
	name := strings.TrimSpace(pod.Annotations[credentialAnnotation])
	if name == "" {
		return admission.Denied(fmt.Sprintf("annotation %s is missing", credentialAnnotation))
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == metadataContainer {
			return admission.Allowed("already injected")
		}
	}
	if pod.Spec.HostNetwork {
		return admission.Denied("hostNetwork pods cannot be injected")
	}

	fc := &unstructured.Unstructured{}
	fc.SetGroupVersionKind(credentialGVK)
	if err := in.client.Get(ctx, types.NamespacedName{Namespace: req.Namespace, Name: name}, fc); err != nil {
		if apierrors.IsNotFound(err) {
			return admission.Denied(fmt.Sprintf("FederatedCredential %s/%s not found", req.Namespace, name))
		}
		return admission.Errored(http.StatusInternalServerError, err)
	}
	serviceAccount, _, _ := unstructured.NestedString(fc.Object, "spec", "google", "serviceAccount")
	secretName, _, _ := unstructured.NestedString(fc.Object, "spec", "secret", "name")
	if secretName == "" {
		secretName = fc.GetName()
	}
	proxyImage, _, _ := unstructured.NestedString(fc.Object, "spec", "alloydb", "proxy", "image")
	if proxyImage == "" {
		proxyImage = defaultProxyImage
	}
	var instances []instance
	rawInstances, _, _ := unstructured.NestedSlice(fc.Object, "spec", "alloydb", "instances")
	for _, raw := range rawInstances {
		m, ok := raw.(map[string]interface{})
		if !ok {
			continue
		}
		inst := instance{connectivity: "PSC", autoIAM: true, port: 5432}
		inst.uri, _, _ = unstructured.NestedString(m, "uri")
		if v, ok, _ := unstructured.NestedString(m, "connectivity"); ok {
			inst.connectivity = v
		}
		if v, ok, _ := unstructured.NestedBool(m, "autoIamAuthn"); ok {
			inst.autoIAM = v
		}
		if v, ok, _ := unstructured.NestedInt64(m, "port"); ok {
			inst.port = v
		}
		instances = append(instances, inst)
	}

	taken := map[int64]bool{}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		for _, p := range c.Ports {
			taken[int64(p.ContainerPort)] = true
		}
	}
	for _, inst := range instances {
		if taken[inst.port] {
			return admission.Denied(fmt.Sprintf("the pod declares port %d, which the AlloyDB instance %s uses", inst.port, inst.uri))
		}
		taken[inst.port] = true
	}
	free := func(from int64) int64 {
		for taken[from] {
			from++
		}
		taken[from] = true
		return from
	}
	listen := fmt.Sprintf("127.0.0.1:%d", free(metadataPort))
	metadataEnv := []corev1.EnvVar{
		{Name: "GCE_METADATA_HOST", Value: listen},
		{Name: "GCE_METADATA_IP", Value: listen},
		{Name: "GCE_METADATA_ROOT", Value: listen},
	}

	sidecars := []corev1.Container{metadataSidecar(in.image, listen)}
	for i, inst := range instances {
		sidecars = append(sidecars, proxySidecar(i, inst, free(healthPort), proxyImage, metadataEnv))
	}
	appEnv := append([]corev1.EnvVar{}, metadataEnv...)
	if project := projectID(serviceAccount); project != "" {
		appEnv = append(appEnv, corev1.EnvVar{Name: "GOOGLE_CLOUD_PROJECT", Value: project})
	}
	if len(instances) > 0 {
		appEnv = append(appEnv,
			corev1.EnvVar{Name: "PGHOST", Value: "127.0.0.1"},
			corev1.EnvVar{Name: "PGPORT", Value: fmt.Sprint(instances[0].port)})
		if instances[0].autoIAM && strings.HasSuffix(serviceAccount, ".gserviceaccount.com") {
			appEnv = append(appEnv, corev1.EnvVar{Name: "PGUSER", Value: strings.TrimSuffix(serviceAccount, ".gserviceaccount.com")})
		}
	}

	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{
		Name:         tokenVolume,
		VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secretName}},
	})
	for i := range pod.Spec.Containers {
		pod.Spec.Containers[i].Env = mergeEnv(pod.Spec.Containers[i].Env, appEnv)
	}
	for i := range pod.Spec.InitContainers {
		pod.Spec.InitContainers[i].Env = mergeEnv(pod.Spec.InitContainers[i].Env, appEnv)
	}
	pod.Spec.InitContainers = append(sidecars, pod.Spec.InitContainers...)
	digest, err := json.Marshal(sidecars)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	sum := sha256.Sum256(digest)
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[injectedAnnotation] = "sha256:" + hex.EncodeToString(sum[:])[:16]

	mutated, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	resp := admission.PatchResponseFromRaw(req.Object.Raw, mutated)
	if !ready(fc) {
		resp.Warnings = append(resp.Warnings, fmt.Sprintf(
			"FederatedCredential %s/%s is not Ready yet: the pod starts, but its metadata emulator answers 503 until the token is issued",
			req.Namespace, name))
	}
	return resp
}

// mergeEnv appends the variables the container does not set itself.
func mergeEnv(own, injected []corev1.EnvVar) []corev1.EnvVar {
	set := map[string]bool{}
	for _, e := range own {
		set[e.Name] = true
	}
	for _, e := range injected {
		if !set[e.Name] {
			own = append(own, e)
		}
	}
	return own
}

func ready(fc *unstructured.Unstructured) bool {
	conditions, _, _ := unstructured.NestedSlice(fc.Object, "status", "conditions")
	for _, raw := range conditions {
		if c, ok := raw.(map[string]interface{}); ok && c["type"] == "Ready" {
			return c["status"] == "True"
		}
	}
	return false
}

func projectID(serviceAccount string) string {
	_, domain, ok := strings.Cut(serviceAccount, "@")
	if !ok {
		return ""
	}
	return strings.TrimSuffix(domain, ".iam.gserviceaccount.com")
}

func securityContext() *corev1.SecurityContext {
	yes, no, user := true, false, runAsUser
	return &corev1.SecurityContext{
		RunAsNonRoot:             &yes,
		RunAsUser:                &user,
		ReadOnlyRootFilesystem:   &yes,
		AllowPrivilegeEscalation: &no,
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func resources(cpu, memory, memoryLimit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse(cpu),
			corev1.ResourceMemory: resource.MustParse(memory),
		},
		Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(memoryLimit)},
	}
}

func metadataSidecar(image, listen string) corev1.Container {
	always := corev1.ContainerRestartPolicyAlways
	return corev1.Container{
		Name:            metadataContainer,
		Image:           image,
		Args:            []string{"metadata-server", "--secret-dir", tokenMountPath, "--listen", listen},
		RestartPolicy:   &always,
		VolumeMounts:    []corev1.VolumeMount{{Name: tokenVolume, MountPath: tokenMountPath, ReadOnly: true}},
		Resources:       resources("10m", "16Mi", "64Mi"),
		SecurityContext: securityContext(),
		StartupProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
				Command: []string{fedcredBinary, "metadata-server", "--check", "--listen", listen},
			}},
			PeriodSeconds: 1, FailureThreshold: 30, TimeoutSeconds: 1,
		},
	}
}

func proxySidecar(index int, inst instance, health int64, image string, env []corev1.EnvVar) corev1.Container {
	always := corev1.ContainerRestartPolicyAlways
	args := []string{inst.uri, "--address=127.0.0.1", fmt.Sprintf("--port=%d", inst.port)}
	switch inst.connectivity {
	case "PSC":
		args = append(args, "--psc")
	case "PublicIP":
		args = append(args, "--public-ip")
	}
	if inst.autoIAM {
		args = append(args, "--auto-iam-authn")
	}
	args = append(args, "--health-check", "--http-address=0.0.0.0", fmt.Sprintf("--http-port=%d", health),
		"--exit-zero-sigterm", "--structured-logs")
	probe := func(path string, period, timeout, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(int32(health))}},
			PeriodSeconds: period, TimeoutSeconds: timeout, FailureThreshold: failures,
		}
	}
	return corev1.Container{
		Name:            fmt.Sprintf("%s%d", proxyPrefix, index),
		Image:           image,
		Args:            args,
		Env:             env,
		RestartPolicy:   &always,
		Resources:       resources("50m", "64Mi", "256Mi"),
		SecurityContext: securityContext(),
		StartupProbe:    probe("/startup", 1, 1, 60),
		LivenessProbe:   probe("/liveness", 10, 5, 3),
	}
}
