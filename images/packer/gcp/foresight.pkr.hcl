# Foresight marketplace image for Google Cloud: Canonical's Ubuntu accelerator image family (NVIDIA driver
# installed) plus Docker, the NVIDIA container toolkit, the service image and foresight.service, hardened for
# the Cloud Marketplace VM solution review. Not a Deep Learning VM image: Google does not let those boot G2
# instances ("You can't use Deep Learning VM Images as boot disks for instances that use the G2 machine type").
#
#   packer build -var project_id=my-project -var service_image_archive=foresight.tar images/packer/gcp
#
# Packer 1.6 has the googlecompute builder built in; Packer >= 1.7 first needs
# `packer plugins install github.com/hashicorp/googlecompute` (no required_plugins block, so 1.6 parses this).

variable "project_id" {
  type = string
}

variable "zone" {
  type    = string
  default = "us-central1-a"
}

variable "machine_type" {
  type        = string
  default     = "g2-standard-4"
  description = "A type with a GPU attached (G2: one L4), so the build can check that torch sees it."
}

variable "source_image_family" {
  type        = string
  default     = "ubuntu-accelerator-2204-amd64-with-nvidia-580"
  description = "Ubuntu image family with the NVIDIA driver to start from; the newest image in it is used."
}

variable "source_image_project" {
  type    = string
  default = "ubuntu-os-accelerator-images"
}

variable "network" {
  type    = string
  default = "default"
}

variable "subnetwork" {
  type    = string
  default = ""
}

variable "service_image_archive" {
  type        = string
  description = "docker-archive tar of the service image (docker save / podman save)."
}

variable "service_image" {
  type        = string
  default     = "localhost/foresight:0.1.0"
  description = "The tag inside service_image_archive."
}

variable "image_version" {
  type    = string
  default = "0.1.0"
}

variable "nvidia_container_toolkit_version" {
  type        = string
  default     = "1.17.8-1"
  description = "Lowest NVIDIA container toolkit package version: the base's toolkit is kept at or above it, else this one is installed; empty keeps any."
}

variable "ubuntu_mirror" {
  type        = string
  default     = ""
  description = "An https:// Ubuntu mirror for the archive and security updates; empty keeps the base's hosts, switched to https (the build fails if they do not serve it)."
}

locals {
  build_time = regex_replace(timestamp(), "[- TZ:]", "")
}

source "googlecompute" "foresight" {
  project_id              = var.project_id
  zone                    = var.zone
  machine_type            = var.machine_type
  on_host_maintenance     = "TERMINATE"
  source_image_family     = var.source_image_family
  source_image_project_id = [var.source_image_project]
  disk_size               = 100
  disk_type               = "pd-balanced"
  network                 = var.network
  subnetwork              = var.subnetwork
  ssh_username            = "packer"
  tags                    = ["foresight-packer-build"]

  image_name        = "foresight-${replace(var.image_version, ".", "-")}-${local.build_time}"
  image_family      = "foresight"
  image_description = "Foresight ${var.image_version}: GPU cache with a learned prefetcher"
  image_labels = {
    product = "foresight"
    version = replace(var.image_version, ".", "-")
  }
}

build {
  sources = ["source.googlecompute.foresight"]

  provisioner "file" {
    source      = var.service_image_archive
    destination = "/tmp/foresight-image.tar"
    generated   = true
  }

  provisioner "file" {
    source      = "${path.root}/../files/"
    destination = "/tmp/foresight-files"
  }

  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo -E env {{ .Vars }} {{ .Path }}"
    environment_vars = [
      "FORESIGHT_IMAGE=${var.service_image}",
      "NVIDIA_CTK_VERSION=${var.nvidia_container_toolkit_version}",
      "UBUNTU_MIRROR=${var.ubuntu_mirror}",
    ]
    scripts = [
      "${path.root}/../provision/05-apt-https.sh",
      "${path.root}/../provision/10-container-runtime.sh",
      "${path.root}/../provision/20-service.sh",
      "${path.root}/../provision/80-harden.sh",
      "${path.root}/../provision/90-verify-hardening.sh",
    ]
  }
}
