package main

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// uidMark stands for the request UID in the body template; each request gets a fresh one.
const uidMark = "@@REQUEST-UID@@"

// reviewTemplate is an AdmissionReview of a pod as kube-apiserver sends it to a mutating
// webhook when a ReplicaSet creates the pod of a Deployment: generateName and no name yet,
// the owner reference and the kube-controller-manager's managedFields, the ServiceAccount
// token volume and default tolerations that built-in admission added before the webhooks,
// two application containers with ports, env, resources, probes and mounts.
func reviewTemplate(namespace, credential string) (prefix, suffix []byte, err error) {
	pod := fmt.Sprintf(podJSON, namespace, credential)
	var object json.RawMessage
	if err := json.Unmarshal([]byte(pod), &object); err != nil {
		return nil, nil, fmt.Errorf("pod template: %w", err)
	}
	review := map[string]any{
		"apiVersion": "admission.k8s.io/v1",
		"kind":       "AdmissionReview",
		"request": map[string]any{
			"uid":             uidMark,
			"kind":            map[string]string{"group": "", "version": "v1", "kind": "Pod"},
			"resource":        map[string]string{"group": "", "version": "v1", "resource": "pods"},
			"requestKind":     map[string]string{"group": "", "version": "v1", "kind": "Pod"},
			"requestResource": map[string]string{"group": "", "version": "v1", "resource": "pods"},
			"namespace":       namespace,
			"operation":       "CREATE",
			"userInfo": map[string]any{
				"username": "system:serviceaccount:kube-system:replicaset-controller",
				"uid":      "6b0a4a42-90f1-4a5e-9d3b-7f1c2e8d5a10",
				"groups":   []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"},
			},
			"object":    object,
			"oldObject": nil,
			"dryRun":    false,
			"options":   map[string]string{"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
		},
	}
	body, err := json.Marshal(review)
	if err != nil {
		return nil, nil, err
	}
	i := bytes.Index(body, []byte(uidMark))
	if i < 0 {
		return nil, nil, fmt.Errorf("uid mark lost in the template")
	}
	return body[:i], body[i+len(uidMark):], nil
}

const podJSON = `{
  "kind": "Pod",
  "apiVersion": "v1",
  "metadata": {
    "generateName": "orders-api-7c9d8b6f5-",
    "namespace": "%[1]s",
    "creationTimestamp": null,
    "labels": {
      "app": "orders-api",
      "app.kubernetes.io/name": "orders-api",
      "app.kubernetes.io/part-of": "shop",
      "app.kubernetes.io/version": "1.4.2",
      "fedcred.io/inject": "true",
      "pod-template-hash": "7c9d8b6f5"
    },
    "annotations": {
      "fedcred.io/credential": "%[2]s",
      "kubectl.kubernetes.io/restartedAt": "2026-11-20T09:12:44Z",
      "prometheus.io/port": "9090",
      "prometheus.io/scrape": "true"
    },
    "ownerReferences": [
      {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "orders-api-7c9d8b6f5",
        "uid": "0e8f5d8e-3c51-4a5e-8a7e-2d4f5b6c7d8e",
        "controller": true,
        "blockOwnerDeletion": true
      }
    ],
    "managedFields": [
      {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2026-11-20T09:12:45Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {
          "f:metadata": {
            "f:annotations": {".": {}, "f:fedcred.io/credential": {}, "f:kubectl.kubernetes.io/restartedAt": {}, "f:prometheus.io/port": {}, "f:prometheus.io/scrape": {}},
            "f:generateName": {},
            "f:labels": {".": {}, "f:app": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {}, "f:app.kubernetes.io/version": {}, "f:fedcred.io/inject": {}, "f:pod-template-hash": {}},
            "f:ownerReferences": {".": {}, "k:{\"uid\":\"0e8f5d8e-3c51-4a5e-8a7e-2d4f5b6c7d8e\"}": {}}
          },
          "f:spec": {
            "f:containers": {
              "k:{\"name\":\"api\"}": {
                ".": {}, "f:env": {".": {}, "k:{\"name\":\"LOG_LEVEL\"}": {".": {}, "f:name": {}, "f:value": {}}, "k:{\"name\":\"POD_NAME\"}": {".": {}, "f:name": {}, "f:valueFrom": {".": {}, "f:fieldRef": {}}}, "k:{\"name\":\"ORDERS_DB_NAME\"}": {".": {}, "f:name": {}, "f:value": {}}},
                "f:image": {}, "f:imagePullPolicy": {}, "f:livenessProbe": {".": {}, "f:failureThreshold": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}, "f:scheme": {}}, "f:periodSeconds": {}, "f:successThreshold": {}, "f:timeoutSeconds": {}},
                "f:name": {}, "f:ports": {".": {}, "k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}}, "k:{\"containerPort\":9090,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}}},
                "f:readinessProbe": {".": {}, "f:failureThreshold": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}, "f:scheme": {}}, "f:periodSeconds": {}, "f:successThreshold": {}, "f:timeoutSeconds": {}},
                "f:resources": {".": {}, "f:limits": {".": {}, "f:memory": {}}, "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}},
                "f:securityContext": {".": {}, "f:allowPrivilegeEscalation": {}, "f:readOnlyRootFilesystem": {}, "f:runAsNonRoot": {}},
                "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {},
                "f:volumeMounts": {".": {}, "k:{\"mountPath\":\"/etc/orders\"}": {".": {}, "f:mountPath": {}, "f:name": {}, "f:readOnly": {}}, "k:{\"mountPath\":\"/tmp\"}": {".": {}, "f:mountPath": {}, "f:name": {}}}
              },
              "k:{\"name\":\"log-shipper\"}": {
                ".": {}, "f:args": {}, "f:env": {".": {}, "k:{\"name\":\"FLUENT_BIT_LOG_LEVEL\"}": {".": {}, "f:name": {}, "f:value": {}}},
                "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                "f:resources": {".": {}, "f:limits": {".": {}, "f:memory": {}}, "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}},
                "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {},
                "f:volumeMounts": {".": {}, "k:{\"mountPath\":\"/fluent-bit/etc\"}": {".": {}, "f:mountPath": {}, "f:name": {}}, "k:{\"mountPath\":\"/tmp\"}": {".": {}, "f:mountPath": {}, "f:name": {}}}
              }
            },
            "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {},
            "f:securityContext": {".": {}, "f:fsGroup": {}, "f:runAsNonRoot": {}},
            "f:serviceAccount": {}, "f:serviceAccountName": {}, "f:terminationGracePeriodSeconds": {},
            "f:topologySpreadConstraints": {".": {}, "k:{\"topologyKey\":\"topology.kubernetes.io/zone\",\"whenUnsatisfiable\":\"ScheduleAnyway\"}": {".": {}, "f:labelSelector": {}, "f:maxSkew": {}, "f:topologyKey": {}, "f:whenUnsatisfiable": {}}},
            "f:volumes": {".": {}, "k:{\"name\":\"config\"}": {".": {}, "f:configMap": {".": {}, "f:defaultMode": {}, "f:name": {}}, "f:name": {}}, "k:{\"name\":\"fluent-bit-config\"}": {".": {}, "f:configMap": {".": {}, "f:defaultMode": {}, "f:name": {}}, "f:name": {}}, "k:{\"name\":\"tmp\"}": {".": {}, "f:emptyDir": {}, "f:name": {}}}
          }
        }
      }
    ]
  },
  "spec": {
    "volumes": [
      {"name": "config", "configMap": {"name": "orders-api-config", "defaultMode": 420}},
      {"name": "fluent-bit-config", "configMap": {"name": "fluent-bit-config", "defaultMode": 420}},
      {"name": "tmp", "emptyDir": {}},
      {
        "name": "kube-api-access-x7k2p",
        "projected": {
          "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
          ],
          "defaultMode": 420
        }
      }
    ],
    "containers": [
      {
        "name": "api",
        "image": "ghcr.io/acme/orders-api:1.4.2",
        "ports": [
          {"name": "http", "containerPort": 8080, "protocol": "TCP"},
          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
        ],
        "env": [
          {"name": "LOG_LEVEL", "value": "info"},
          {"name": "ORDERS_DB_NAME", "value": "orders"},
          {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
        ],
        "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "250m", "memory": "256Mi"}},
        "volumeMounts": [
          {"name": "config", "readOnly": true, "mountPath": "/etc/orders"},
          {"name": "tmp", "mountPath": "/tmp"},
          {"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false}
      },
      {
        "name": "log-shipper",
        "image": "cr.fluentbit.io/fluent/fluent-bit:3.2.4",
        "args": ["--config=/fluent-bit/etc/fluent-bit.yaml"],
        "env": [{"name": "FLUENT_BIT_LOG_LEVEL", "value": "warn"}],
        "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "20m", "memory": "32Mi"}},
        "volumeMounts": [
          {"name": "fluent-bit-config", "mountPath": "/fluent-bit/etc"},
          {"name": "tmp", "mountPath": "/tmp"},
          {"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent"
      }
    ],
    "restartPolicy": "Always",
    "terminationGracePeriodSeconds": 30,
    "dnsPolicy": "ClusterFirst",
    "serviceAccountName": "orders-api",
    "serviceAccount": "orders-api",
    "securityContext": {"runAsNonRoot": true, "fsGroup": 2000},
    "schedulerName": "default-scheduler",
    "tolerations": [
      {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
      {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    ],
    "topologySpreadConstraints": [
      {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "orders-api"}}}
    ],
    "priority": 0,
    "enableServiceLinks": true,
    "preemptionPolicy": "PreemptLowerPriority"
  },
  "status": {}
}`
